/**
 * "Only these fields may be set": the one check behind every NACK for something the built-in
 * router does not implement. Fields are named by their proto (snake_case) names, the way Envoy
 * and `error_detail` spell field paths.
 */
import { isFieldSet } from '@bufbuild/protobuf';
import type { DescMessage, MessageShape } from '@bufbuild/protobuf';

/** A field path relative to a resource, and why it cannot be applied. */
export interface Problem {
  field: string;
  message: string;
}

export function join(at: string, field: string): string {
  return at === '' ? field : `${at}.${field}`;
}

/** Add `<at>.<field>: unsupported` for every set field of `message` not in `allowed`. */
export function onlyFields<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>, allowed: readonly string[], at: string, problems: Problem[]): void {
  for (const field of schema.fields) {
    if (allowed.includes(field.name)) continue;
    if (isFieldSet(message, field)) problems.push({ field: join(at, field.name), message: 'unsupported' });
  }
}

/** Add `<at>.<field>: unsupported` for every set field of `message` that is in `denied`. */
export function deniedFields<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>, denied: readonly string[], at: string, problems: Problem[]): void {
  for (const field of schema.fields) {
    if (denied.includes(field.name) && isFieldSet(message, field)) problems.push({ field: join(at, field.name), message: 'unsupported' });
  }
}

/** Milliseconds of a protobuf Duration (undefined stays undefined). */
export function durationMs(duration: { seconds: bigint; nanos: number } | undefined): number | undefined {
  if (duration === undefined) return undefined;
  return Number(duration.seconds) * 1000 + Math.floor(duration.nanos / 1e6);
}
