#!/usr/bin/env node
// Entry point of the `tether` command. The sources are TypeScript; bin/typescript.js loads them on
// the fly so a fresh clone runs without a build step.
import './typescript.js';

const { main } = await import('../cli/main.ts');
await main(process.argv.slice(2));
