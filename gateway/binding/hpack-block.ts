/**
 * HPACK (RFC 7541) for a bound HTTP/2 client connection. The gateway decodes every header block
 * the client sends, keeping the client encoder's dynamic table in step, and re-encodes what it
 * forwards with literals only (never indexed, no Huffman): the upstream's decoder table then never
 * changes, so there is no second encoder state to keep in step, and the response direction's
 * HPACK state stays between the upstream and the client untouched. Blocks the gateway injects
 * (a 421, a refusal) are literal-only as well, so they leave the client's decoder table as it was.
 *
 * Integers, strings and Huffman codes are decoded by `hpack.js`; the representation loop is ours,
 * so that its rules are checked: a table size update only at the start of a block and no larger
 * than the limit the client was told, a bounded header list, lowercase names.
 */
import hpack from 'hpack.js';

export interface HeaderField {
  name: string;
  value: string;
}

export class HpackError extends Error {
  override readonly name = 'HpackError';
}

/** The client encoder's view of HPACK: one per connection, every block in order. */
export class HeaderBlockDecoder {
  private readonly table;

  constructor(
    /** SETTINGS_HEADER_TABLE_SIZE the client has been told (the limit of its table size updates). */
    readonly maxTableSize: number,
    /** Limit on the decoded list (RFC 9113 §6.5.2's measure: name + value + 32 per field). */
    private readonly maxListBytes: number,
  ) {
    this.table = hpack.table.create({ maxSize: maxTableSize });
  }

  /**
   * The fields of one complete header block. Throws `HpackError` for anything RFC 7541 calls a
   * decoding error; the connection cannot go on after one (COMPRESSION_ERROR).
   */
  decode(block: Buffer): HeaderField[] {
    const decoder = hpack.decoder.create();
    if (block.length > 0) decoder.push(block);
    const fields: HeaderField[] = [];
    let listBytes = 0;
    try {
      while (!decoder.isEmpty()) {
        if (decoder.decodeBit() === 1) {
          const entry = this.table.lookup(decoder.decodeInt());
          listBytes += this.add(fields, entry.name, entry.value);
          continue;
        }
        const incremental = decoder.decodeBit() === 1;
        if (!incremental && decoder.decodeBit() === 1) {
          // Dynamic table size update (001xxxxx): only before the first field (RFC 7541 §4.2).
          if (fields.length > 0) throw new HpackError('a table size update after a header field');
          const size = decoder.decodeInt();
          if (size > this.maxTableSize) throw new HpackError(`table size ${size} over the limit ${this.maxTableSize}`);
          this.table.updateSize(size);
          continue;
        }
        // 01: incremental indexing (6-bit index); 0000/0001: without/never indexed (4-bit).
        if (!incremental) decoder.decodeBit();
        const index = decoder.decodeInt();
        let name: string;
        let nameSize: number;
        if (index === 0) {
          const octets = decoder.decodeStr();
          name = latin1(octets);
          nameSize = octets.length;
        } else {
          const entry = this.table.lookup(index);
          name = entry.name;
          nameSize = entry.nameSize;
        }
        const octets = decoder.decodeStr();
        const value = latin1(octets);
        if (incremental) this.table.add(name, value, nameSize, octets.length);
        listBytes += this.add(fields, name, value);
      }
    } catch (reason) {
      if (reason instanceof HpackError) throw reason;
      throw new HpackError(reason instanceof Error ? reason.message : 'malformed header block');
    }
    if (listBytes > this.maxListBytes) throw new HpackError(`header list of ${listBytes} bytes over the limit ${this.maxListBytes}`);
    return fields;
  }

  private add(fields: HeaderField[], name: string, value: string): number {
    fields.push({ name, value });
    return name.length + value.length + 32;
  }
}

function latin1(octets: Buffer | number[]): string {
  if (Buffer.isBuffer(octets)) return octets.toString('latin1');
  let text = '';
  for (const octet of octets) text += String.fromCharCode(octet);
  return text;
}

/** A header block of `fields` as literals without indexing, new names, no Huffman (RFC 7541 §6.2.2). */
export function encodeLiteral(fields: readonly HeaderField[]): Buffer {
  let size = 0;
  for (const { name, value } of fields) size += 1 + intSize(name.length) + name.length + intSize(value.length) + value.length;
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  for (const { name, value } of fields) {
    out[at++] = 0x00;
    at = writeInt(out, at, name.length);
    at += out.write(name, at, 'latin1');
    at = writeInt(out, at, value.length);
    at += out.write(value, at, 'latin1');
  }
  return out;
}

/** Octets of an integer with a 7-bit prefix (a string length, H = 0). */
function intSize(n: number): number {
  if (n < 127) return 1;
  let size = 2;
  for (let rest = n - 127; rest >= 128; rest >>>= 7) size++;
  return size;
}

function writeInt(out: Buffer, at: number, n: number): number {
  if (n < 127) {
    out[at++] = n;
    return at;
  }
  out[at++] = 127;
  let rest = n - 127;
  while (rest >= 128) {
    out[at++] = (rest & 0x7f) | 0x80;
    rest >>>= 7;
  }
  out[at++] = rest;
  return at;
}
