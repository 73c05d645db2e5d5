/**
 * Options are typed once (a zod schema per component) and validated at start. A bad field is
 * refused with its exact path, e.g. `gateway.tunnel.maxStreams: expected number >= 1`.
 */
import type { z } from 'zod';
import { TetherError } from './errors.js';

export const INVALID_OPTIONS = 'INVALID_OPTIONS';

/** Validate `input` against `schema`; throw `INVALID_OPTIONS` naming every bad field path. */
export function parseOptions<S extends z.ZodType>(schema: S, input: unknown, root: string): z.output<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const path = [root, ...issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p)))]
      .join('.')
      .replace(/\.\[/g, '[');
    return `${path}: ${issue.message}`;
  });
  throw new TetherError(INVALID_OPTIONS, problems.join('; '), { details: { problems } });
}
