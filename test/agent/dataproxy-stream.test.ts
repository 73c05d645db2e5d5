/**
 * A 64 MiB object goes up and down through signed URLs while memory stays flat: the client, the
 * blob server and the store all run in this process, so buffering the object anywhere would show
 * as ≥ 64 MiB of heap or external memory.
 */
import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import test from 'ava';
import { uploadStream } from '../../agent/dataproxy/index.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { startFixture } from './dataproxy-fixture.js';

failOnLeaks(test);

const SIZE = 64 * 1024 * 1024;
const CHUNK = 64 * 1024;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Deterministic content, generated chunk by chunk (each chunk differs so the MD5 covers order). */
function content(onChunk: () => void): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= SIZE) {
        this.push(null);
        return;
      }
      const chunk = Buffer.alloc(CHUNK, sent / CHUNK);
      chunk.writeUInt32BE(sent / CHUNK, 0);
      sent += CHUNK;
      onChunk();
      this.push(chunk);
    },
  });
}

interface Peak {
  heap: number;
  external: number;
  rss: number;
  /** heap + external right after a forced GC: what is actually held, without garbage. */
  live: number;
}

/** Sample memory on every chunk; every 4 MiB force a GC first to see what is retained. */
function sampler(): { sample: () => void; peak: Peak } {
  const peak: Peak = { heap: 0, external: 0, rss: 0, live: 0 };
  let chunks = 0;
  return {
    peak,
    sample() {
      chunks += 1;
      if (chunks % 64 === 0) {
        gc();
        const usage = process.memoryUsage();
        peak.live = Math.max(peak.live, usage.heapUsed + usage.arrayBuffers);
      }
      const usage = process.memoryUsage();
      peak.heap = Math.max(peak.heap, usage.heapUsed);
      peak.external = Math.max(peak.external, usage.arrayBuffers);
      peak.rss = Math.max(peak.rss, usage.rss);
    },
  };
}

test('64 MiB up and down through signed URLs with bounded memory', async (t) => {
  const fixture = await startFixture({ maxUploadBytes: 128 * 1024 * 1024 });
  try {
    const hash = createHash('md5');
    await pipeline(content(() => undefined), hash);
    const md5 = hash.digest('base64');
    const location = await fixture.dataproxy.createUploadLocationForUri({ uri: 'tether-blob://dp1/big/object.bin', contentMd5: md5, contentLength: SIZE });

    gc();
    const base = process.memoryUsage();
    const up = sampler();
    const uploaded = await uploadStream(location.signedUrl, { ...location.headers }, content(up.sample));
    t.is(uploaded.status, 201, uploaded.body);

    gc();
    const downBase = process.memoryUsage();
    const down = sampler();
    const link = await fixture.dataproxy.createDownloadLink({ uri: location.nativeUrl });
    const downloadHash = createHash('md5');
    let received = 0;
    await new Promise<void>((resolve, reject) => {
      request(link.signedUrl, { agent: false }, (res) => {
        t.is(res.statusCode, 200);
        const sink = new Writable({
          write(chunk: Buffer, _encoding, callback) {
            received += chunk.length;
            downloadHash.update(chunk);
            down.sample();
            callback();
          },
        });
        pipeline(res, sink).then(resolve, reject);
      })
        .on('error', reject)
        .end();
    });
    t.is(received, SIZE);
    t.is(downloadHash.digest('base64'), md5);

    const mib = (bytes: number): number => Math.round((bytes / 1024 / 1024) * 10) / 10;
    const live = {
      uploadLiveGrowthMiB: mib(up.peak.live - base.heapUsed - base.arrayBuffers),
      downloadLiveGrowthMiB: mib(down.peak.live - downBase.heapUsed - downBase.arrayBuffers),
    };
    const figures = {
      uploadHeapGrowthMiB: mib(up.peak.heap - base.heapUsed),
      uploadExternalGrowthMiB: mib(up.peak.external - base.arrayBuffers),
      uploadRssGrowthMiB: mib(up.peak.rss - base.rss),
      downloadHeapGrowthMiB: mib(down.peak.heap - downBase.heapUsed),
      downloadExternalGrowthMiB: mib(down.peak.external - downBase.arrayBuffers),
      downloadRssGrowthMiB: mib(down.peak.rss - downBase.rss),
    };
    t.log(JSON.stringify({ ...live, ...figures }));
    // Buffering the object would hold ≥ 64 MiB; streaming holds chunks in flight (measured ~8-12 MiB).
    for (const [name, value] of Object.entries(live)) t.true(value < 20, `${name} = ${value} MiB`);
    // Without forced GCs, garbage chunks pile up to V8's external-memory GC trigger, still well under the size.
    for (const [name, value] of Object.entries(figures)) t.true(value < 48, `${name} = ${value} MiB`);
  } finally {
    await fixture.close();
  }
});
