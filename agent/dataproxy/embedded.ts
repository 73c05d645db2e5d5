/**
 * The embedded data path in one call, for the agent and `tether dev`: a filesystem blob store
 * under `root`, its blob server (the URL clients upload to and download from), the dataproxy that
 * signs for it, and the dataproxy API on its own loopback server (route the tunnel's
 * `/tether.dataproxy.v1.DataProxyService/` prefix to `api.url`).
 */
import type { Registry } from 'prom-client';
import type { Closable } from '../../common/lifecycle.js';
import type { Logger } from '../../common/log.js';
import { DataproxyApiServer } from './api.js';
import type { DataproxyApiOptions } from './api.js';
import { BlobServer } from './blob-server.js';
import { FsBlobStore } from './blob-store.js';
import { Dataproxy } from './dataproxy.js';

export interface EmbeddedDataproxyOptions {
  /** Folder of the blob store. */
  root: string;
  bucket?: string;
  signingKeys: readonly Buffer[];
  /** Where the blob server listens; default 127.0.0.1:0. */
  blobHost?: string;
  blobPort?: number;
  /** Serve the blob server over HTTPS with this key and certificate (PEM). */
  blobTls?: { key: string; cert: string };
  /** The blob server's URL as clients reach it; default its listening address. */
  publicUrl?: string;
  /** Where the API listens; default 127.0.0.1:0 (reached through the tunnel, never directly). */
  apiHost?: string;
  apiPort?: number;
  clusterId?: string;
  maxExpiresInSec?: number;
  maxUploadBytes?: number;
  registry?: Registry;
  logger?: Logger;
  /** Per-request RBAC for the API (see `DataproxyApiOptions.authorize`). */
  authorize?: DataproxyApiOptions['authorize'];
}

export interface EmbeddedDataproxy extends Closable {
  store: FsBlobStore;
  dataproxy: Dataproxy;
  blobs: BlobServer;
  api: DataproxyApiServer;
}

export async function startEmbeddedDataproxy(options: EmbeddedDataproxyOptions): Promise<EmbeddedDataproxy> {
  const store = new FsBlobStore(options.root);
  await store.init();
  const bucket = options.bucket ?? 'local';
  const shared = {
    ...(options.maxUploadBytes === undefined ? {} : { maxUploadBytes: options.maxUploadBytes }),
    ...(options.registry === undefined ? {} : { registry: options.registry }),
  };
  const blobs = new BlobServer({ store, bucket, signingKeys: options.signingKeys, ...shared, ...(options.blobTls === undefined ? {} : { tls: options.blobTls }), ...(options.logger === undefined ? {} : { logger: options.logger }) });
  await blobs.listen(options.blobPort ?? 0, options.blobHost ?? '127.0.0.1');
  const dataproxy = new Dataproxy({
    store,
    bucket,
    signingKeys: options.signingKeys,
    publicUrl: options.publicUrl ?? blobs.url,
    ...shared,
    ...(options.clusterId === undefined ? {} : { clusterId: options.clusterId }),
    ...(options.maxExpiresInSec === undefined ? {} : { maxExpiresInSec: options.maxExpiresInSec }),
  });
  const api = new DataproxyApiServer(dataproxy, {
    ...(options.logger === undefined ? {} : { logger: options.logger }),
    ...(options.authorize === undefined ? {} : { authorize: options.authorize }),
  });
  try {
    await api.listen(options.apiPort ?? 0, options.apiHost ?? '127.0.0.1');
  } catch (reason) {
    await blobs.close();
    throw reason;
  }
  return {
    store,
    dataproxy,
    blobs,
    api,
    async drain(graceMs?: number) {
      await Promise.all([blobs.drain(graceMs), api.drain(graceMs)]);
    },
    async close() {
      await Promise.all([blobs.close(), api.close()]);
    },
  };
}
