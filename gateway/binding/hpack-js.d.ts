/**
 * The parts of `hpack.js` (RFC 7541 integer, string and Huffman decoding; the static and dynamic
 * tables) that `hpack-block.ts` uses. The package ships no types.
 */
declare module 'hpack.js' {
  interface Decoder {
    push(chunk: Buffer): void;
    isEmpty(): boolean;
    decodeBit(): number;
    decodeInt(): number;
    /** A literal's octets: a Buffer when sent as is, an array of octets when Huffman-coded. */
    decodeStr(): Buffer | number[];
  }
  interface TableEntry {
    name: string;
    value: string;
    nameSize: number;
  }
  interface Table {
    lookup(index: number): TableEntry;
    add(name: string, value: string, nameSize: number, valueSize: number): void;
    updateSize(size: number): void;
    size: number;
  }
  const hpack: {
    decoder: { create(): Decoder };
    /** RFC 7541 Appendix A: by name, its first index and the index of each value. */
    'static-table': { map: Record<string, { index: number; values: Record<string, number> } | undefined> };
    table: { create(options: { maxSize: number }): Table };
  };
  export default hpack;
}
