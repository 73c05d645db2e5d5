#!/usr/bin/env node
// Entry point of the `tether` command. The sources are TypeScript; tsx loads them on the fly so a
// fresh clone runs without a build step.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../cli/main.ts');
await main(process.argv.slice(2));
