// `node --import ./bin/typescript.js file.ts` (or importing this module first): registers the
// hooks in typescript-hooks.js so that Node runs this repository's TypeScript sources directly.
import { register } from 'node:module';

process.setSourceMapsEnabled(true);
register('./typescript-hooks.js', import.meta.url);
