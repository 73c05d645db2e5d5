// Module hooks that load this repository's TypeScript sources: esbuild strips the types of each
// `.ts` file as Node loads it (no bundling, no type check: `npm test` runs `tsc --noEmit` for
// that), and an import of `./x.js` finds `./x.ts` when there is no `./x.js`.
//
// Why not tsx: it compiles with esbuild's `keepNames`, which wraps every named function and
// closure in a `defineProperty(fn, 'name')` call. On the tunnel's request path that cost ~6 % of
// the requests per second and 3.3 KiB of heap per idle WebSocket at the gateway
// (`npm run bench -- tunnel`); the names it keeps are the ones V8 infers anyway, since nothing is
// minified here.
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { transform } from 'esbuild';

const OPTIONS = {
  loader: 'ts',
  format: 'esm',
  target: 'node20',
  sourcemap: 'inline',
  // The settings of tsconfig.json that change emitted code.
  tsconfigRaw: { compilerOptions: { verbatimModuleSyntax: true, useDefineForClassFields: true } },
};

function isPathLike(specifier) {
  return specifier.startsWith('./') || specifier.startsWith('../') || specifier.startsWith('/') || specifier.startsWith('file:');
}

export async function resolve(specifier, context, nextResolve) {
  try {
    return await nextResolve(specifier, context);
  } catch (error) {
    if (error?.code !== 'ERR_MODULE_NOT_FOUND' || !specifier.endsWith('.js') || !isPathLike(specifier)) throw error;
    return nextResolve(`${specifier.slice(0, -3)}.ts`, context);
  }
}

export async function load(url, context, nextLoad) {
  if (!url.startsWith('file:') || !url.endsWith('.ts')) return nextLoad(url, context);
  const file = fileURLToPath(url);
  const source = await readFile(file, 'utf8');
  const { code } = await transform(source, { ...OPTIONS, sourcefile: file });
  return { format: 'module', source: code, shortCircuit: true };
}
