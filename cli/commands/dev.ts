import type { Command } from 'commander';

/** `tether dev`: runs the whole system locally. */
export function registerDevCommand(_program: Command): void {}
