/**
 * Graceful shutdown for long-running commands: the first SIGINT/SIGTERM drains every service
 * (within `graceMs`), then closes it; a second signal closes at once.
 */
import type { Closable } from './lifecycle.js';
import type { Logger } from './log.js';

export interface ShutdownOptions {
  services: Closable[];
  graceMs: number;
  logger: Logger;
  /** Called after everything is closed. Default: `process.exit(0)`. */
  onExit?: (code: number) => void;
}

/** Install the handlers; returns a function that removes them. */
export function handleSignals(options: ShutdownOptions): () => void {
  const { services, graceMs, logger } = options;
  const exit = options.onExit ?? ((code: number) => process.exit(code));
  let signalled = 0;

  const closeAll = async (): Promise<void> => {
    await Promise.allSettled(services.map((s) => s.close()));
  };

  const onSignal = (signal: NodeJS.Signals): void => {
    signalled++;
    if (signalled > 1) {
      logger.warn({ signal }, 'second signal: closing now');
      void closeAll().then(() => exit(1));
      return;
    }
    logger.info({ signal, graceMs }, 'draining');
    void Promise.allSettled(services.map((s) => s.drain(graceMs)))
      .then(closeAll)
      .then(() => {
        logger.info('stopped');
        exit(0);
      });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}
