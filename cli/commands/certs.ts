import type { Command } from 'commander';

/** `tether certs …`: filled in by the PKI work (issue 2). */
export function registerCertsCommand(_program: Command): void {}
