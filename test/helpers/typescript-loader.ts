/** `--import` this in a child Node process to run the repository's TypeScript (bin/typescript.js). */
export const TYPESCRIPT_LOADER = new URL('../../bin/typescript.js', import.meta.url).href;
