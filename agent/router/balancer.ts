/**
 * Per-cluster endpoint choice: smooth weighted round robin (equal weights give plain round robin).
 * A balancer is kept across configuration updates while its cluster's endpoint list is unchanged,
 * so an unrelated update does not restart the rotation.
 */
import type { Endpoint } from './compile.js';

export class Balancer {
  readonly endpoints: readonly Endpoint[];
  /** Identity of the endpoint list (scheme, hosts, ports, weights). */
  readonly key: string;
  readonly #current: number[];
  readonly #total: number;

  constructor(endpoints: readonly Endpoint[], key: string) {
    this.endpoints = endpoints;
    this.key = key;
    this.#current = endpoints.map(() => 0);
    this.#total = endpoints.reduce((s, e) => s + Math.max(1, e.weight), 0);
  }

  /** The next endpoint, skipping `avoid` (already tried) while others remain; null when empty. */
  pick(avoid?: ReadonlySet<Endpoint>): Endpoint | null {
    if (this.endpoints.length === 0) return null;
    const candidates = avoid === undefined || avoid.size >= this.endpoints.length ? null : avoid;
    let best = -1;
    for (let i = 0; i < this.endpoints.length; i++) {
      const endpoint = this.endpoints[i] as Endpoint;
      this.#current[i] = (this.#current[i] ?? 0) + Math.max(1, endpoint.weight);
      if (candidates?.has(endpoint)) continue;
      if (best < 0 || (this.#current[i] ?? 0) > (this.#current[best] ?? 0)) best = i;
    }
    this.#current[best] = (this.#current[best] ?? 0) - this.#total;
    return this.endpoints[best] ?? null;
  }
}

export function endpointsKey(scheme: string, endpoints: readonly Endpoint[]): string {
  return `${scheme}|${endpoints.map((e) => `${e.host}:${e.port}*${e.weight}`).join(',')}`;
}
