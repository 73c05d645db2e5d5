/**
 * HPACK (RFC 7541) for a bound HTTP/2 client connection. The gateway decodes every header block
 * the client sends, keeping the client encoder's dynamic table in step, and re-encodes what it
 * forwards with an encoder of its own toward the upstream (`HeaderBlockEncoder`: the static table,
 * and a dynamic table for the fields that repeat, such as the gateway's identity fields; never the
 * credential or the request id). The response direction's HPACK state stays between the upstream
 * and the client untouched: blocks the gateway injects toward the client (a 421, a refusal) are
 * literal-only (`encodeLiteral`), so they leave the client's decoder table as it was.
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

const STATIC = hpack['static-table'].map;
/** Fields never put in the dynamic table: credentials (never indexed, RFC 7541 §7.1.3) and values that change per request. */
const SENSITIVE = new Set(['authorization', 'proxy-authorization', 'cookie']);
const UNINDEXED = new Set(['tether-request-id', 'content-length', 'if-none-match', 'if-modified-since']);
const MAX_INDEXED_VALUE = 256;
const DYNAMIC_BASE = 62;

/**
 * The gateway's HPACK encoder toward one upstream connection. Its table is never larger than the
 * 4 KiB every decoder starts with, nor than what the upstream's SETTINGS allow (a smaller limit is
 * signalled with a table size update at the start of the next block). No Huffman coding: the
 * upstream is in the same data centre; the bytes saved would cost CPU on both ends.
 */
export class HeaderBlockEncoder {
  /** Oldest first: each entry's key (name NUL value), size and insertion number. */
  private readonly entries: Array<{ key: string; size: number; n: number }> = [];
  private readonly byKey = new Map<string, number>();
  private inserted = 0;
  private size = 0;
  private max = 4_096;
  private update: number | null = null;

  /** The upstream's SETTINGS_HEADER_TABLE_SIZE. */
  setLimit(limit: number): void {
    const max = Math.min(limit, 4_096);
    if (max === this.max) return;
    this.max = max;
    this.evict();
    this.update = max;
  }

  encode(fields: readonly HeaderField[]): Buffer {
    const out: Buffer[] = [];
    if (this.update !== null) {
      out.push(int(this.update, 5, 0x20));
      this.update = null;
    }
    for (const { name, value } of fields) {
      const known = Object.hasOwn(STATIC, name) ? STATIC[name] : undefined;
      const staticFull = known !== undefined && Object.hasOwn(known.values, value) ? known.values[value] : undefined;
      if (staticFull !== undefined) {
        out.push(int(staticFull, 7, 0x80));
        continue;
      }
      const key = `${name}\0${value}`;
      const n = this.byKey.get(key);
      if (n !== undefined) {
        out.push(int(DYNAMIC_BASE + this.inserted - 1 - n, 7, 0x80));
        continue;
      }
      const entrySize = name.length + value.length + 32;
      const nameIndex = known?.index ?? 0;
      if (SENSITIVE.has(name)) out.push(int(nameIndex, 4, 0x10));
      else if (UNINDEXED.has(name) || value.length > MAX_INDEXED_VALUE || entrySize > this.max) out.push(int(nameIndex, 4, 0x00));
      else {
        out.push(int(nameIndex, 6, 0x40));
        this.add(key, entrySize);
      }
      if (nameIndex === 0) out.push(str(name));
      out.push(str(value));
    }
    return Buffer.concat(out);
  }

  private add(key: string, size: number): void {
    const n = this.inserted++;
    this.entries.push({ key, size, n });
    this.byKey.set(key, n);
    this.size += size;
    this.evict();
  }

  private evict(): void {
    while (this.size > this.max) {
      const oldest = this.entries.shift();
      if (oldest === undefined) break;
      this.size -= oldest.size;
      if (this.byKey.get(oldest.key) === oldest.n) this.byKey.delete(oldest.key);
    }
  }
}

/** An integer with an N-bit prefix, the first octet's other bits `flags` (RFC 7541 §5.1). */
function int(value: number, prefixBits: number, flags: number): Buffer {
  const limit = (1 << prefixBits) - 1;
  if (value < limit) return Buffer.from([flags | value]);
  const octets = [flags | limit];
  let rest = value - limit;
  while (rest >= 128) {
    octets.push((rest & 0x7f) | 0x80);
    rest >>>= 7;
  }
  octets.push(rest);
  return Buffer.from(octets);
}

/** A string literal, not Huffman-coded. */
function str(text: string): Buffer {
  const length = int(text.length, 7, 0);
  const out = Buffer.allocUnsafe(length.length + text.length);
  length.copy(out, 0);
  out.write(text, length.length, 'latin1');
  return out;
}
