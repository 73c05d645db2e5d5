/** A dataproxy, its blob server and its API on loopback, over a temp folder, with a settable clock. */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Registry } from 'prom-client';
import { createRegistry } from '../../common/metrics.js';
import { BlobServer, Dataproxy, DataproxyApiServer, FsBlobStore } from '../../agent/dataproxy/index.js';

export interface Fixture {
  dir: string;
  store: FsBlobStore;
  dataproxy: Dataproxy;
  blobs: BlobServer;
  api: DataproxyApiServer;
  registry: Registry;
  clock: { now: number };
  close(): Promise<void>;
}

export async function startFixture(options: { maxUploadBytes?: number; clusterId?: string } = {}): Promise<Fixture> {
  const dir = await mkdtemp(join(tmpdir(), 'tether-dataproxy-'));
  const store = new FsBlobStore(join(dir, 'blobs'));
  await store.init();
  const registry = createRegistry();
  const clock = { now: Date.now() };
  const signingKeys = [randomBytes(32)];
  const now = (): number => clock.now;
  const blobs = new BlobServer({ store, bucket: 'dp1', signingKeys, now, registry, ...(options.maxUploadBytes === undefined ? {} : { maxUploadBytes: options.maxUploadBytes }) });
  await blobs.listen();
  const dataproxy = new Dataproxy({
    store,
    bucket: 'dp1',
    publicUrl: () => blobs.url,
    signingKeys,
    now,
    registry,
    ...(options.maxUploadBytes === undefined ? {} : { maxUploadBytes: options.maxUploadBytes }),
    ...(options.clusterId === undefined ? {} : { clusterId: options.clusterId }),
  });
  const api = new DataproxyApiServer(dataproxy);
  await api.listen();
  return {
    dir,
    store,
    dataproxy,
    blobs,
    api,
    registry,
    clock,
    async close() {
      await Promise.all([blobs.close(), api.close()]);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export function md5(data: Buffer | string): string {
  return createHash('md5').update(data).digest('base64');
}

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json: { code?: string; [key: string]: unknown };
}

/** One request with an exact (unnormalised) path, on its own connection. */
export function raw(base: string, method: string, path: string, headers: Record<string, string | number> = {}, body?: Buffer | string): Promise<RawResponse> {
  const target = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: target.hostname, port: target.port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: RawResponse['json'] = {};
        try {
          json = JSON.parse(text) as RawResponse['json'];
        } catch {
          // not JSON
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Path and query of a signed URL. */
export function pathOf(url: string): string {
  const parsed = new URL(url);
  return parsed.pathname + parsed.search;
}

export const IDENTITY = { 'tether-subject': 'alice@example.com', 'tether-cluster': 'c1' };

export async function apiCall(fixture: Fixture, method: 'CreateUploadLocation' | 'CreateDownloadLink', body: unknown, headers: Record<string, string> = IDENTITY): Promise<RawResponse> {
  const text = JSON.stringify(body);
  return raw(fixture.api.url, 'POST', `/tether.dataproxy.v1.DataProxyService/${method}`, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers }, text);
}
