/**
 * Volume: 1 GiB each way through gateway and agent with flat memory, and repeated tunnel
 * connect/disconnect cycles leaving heap and handles flat.
 */
import test from 'ava';
import * as https from 'node:https';
import { Readable } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { failOnLeaks } from '../helpers/leaks.js';
import { splitHostPort } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startHttp1Upstream, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

const MIB = 1024 * 1024;
/** Defaults keep the file fast; `TETHER_TUNNEL_VOLUME_MIB=1024 TETHER_TUNNEL_CYCLES=1000` is the full run. */
const VOLUME = Number(process.env.TETHER_TUNNEL_VOLUME_MIB ?? 128) * MIB;
const CYCLES = Number(process.env.TETHER_TUNNEL_CYCLES ?? 100);

setFlagsFromString('--expose_gc');
const gc = runInNewContext('gc') as () => void;

let env: TunnelEnv;
let upstream: Upstream;

test.before(async () => {
  upstream = await startHttp1Upstream((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/count') {
      let n = 0;
      req.on('data', (c: Buffer) => {
        n += c.length;
      });
      req.on('end', () => res.end(String(n)));
      return;
    }
    const n = Number(url.searchParams.get('n') ?? '0');
    res.writeHead(200, { 'content-length': String(n) });
    const chunk = Buffer.alloc(256 * 1024, 1);
    let left = n;
    const pump = (): void => {
      while (left > 0) {
        const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
        left -= piece.length;
        if (!res.write(piece)) return void res.once('drain', pump);
      }
      res.end();
    };
    pump();
  });
  env = await startTunnelEnv({ agents: [{ clusterId: 'c1', routes: [{ prefix: '/', upstream: upstream.url }] }] });
});

test.after.always(async () => {
  await env?.close();
  await upstream?.close();
});

/** Track peak RSS while `fn` runs. */
async function peakRss<T>(fn: () => Promise<T>): Promise<{ result: T; baseline: number; peak: number }> {
  gc();
  const baseline = process.memoryUsage().rss;
  let peak = baseline;
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 50);
  try {
    const result = await fn();
    return { result, baseline, peak: Math.max(peak, process.memoryUsage().rss) };
  } finally {
    clearInterval(timer);
  }
}

function request(method: string, path: string, token: string, body?: Readable): Promise<{ status: number; bytes: number; text: string }> {
  const [host, port] = splitHostPort(env.gateway.address);
  return new Promise((resolve, reject) => {
    const req = https.request({ host, port, servername: 'localhost', ca: env.pki.trustBundlePem, method, path, headers: { host: 'c1.tether.localhost', authorization: `Bearer ${token}` }, agent: false }, (res) => {
      let bytes = 0;
      let text = '';
      res.on('data', (c: Buffer) => {
        bytes += c.length;
        if (text.length < 64) text += c.toString();
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body === undefined) req.end();
    else body.pipe(req);
  });
}

function generate(total: number): Readable {
  const chunk = Buffer.alloc(256 * 1024, 2);
  let left = total;
  return new Readable({
    read() {
      if (left <= 0) return void this.push(null);
      const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
      left -= piece.length;
      this.push(piece);
    },
  });
}

test.serial(`${VOLUME / MIB} MiB download and upload through the tunnel with flat memory`, async (t) => {
  const token = await env.token(['c1']);
  const down = await peakRss(async () => {
    const start = process.hrtime.bigint();
    const reply = await request('GET', `/bytes?n=${VOLUME}`, token);
    return { ...reply, ms: Number(process.hrtime.bigint() - start) / 1e6 };
  });
  t.is(down.result.bytes, VOLUME);
  const up = await peakRss(async () => {
    const start = process.hrtime.bigint();
    const reply = await request('POST', '/count', token, generate(VOLUME));
    return { ...reply, ms: Number(process.hrtime.bigint() - start) / 1e6 };
  });
  t.is(up.result.text, String(VOLUME));
  const mbps = (ms: number): string => ((VOLUME / MIB) / (ms / 1000)).toFixed(0);
  t.log(`download ${mbps(down.result.ms)} MiB/s, RSS +${((down.peak - down.baseline) / MIB).toFixed(0)} MiB; upload ${mbps(up.result.ms)} MiB/s, RSS +${((up.peak - up.baseline) / MIB).toFixed(0)} MiB (client, gateway, agent and upstream in one process)`);
  t.true(down.peak - down.baseline < 200 * MIB, 'download memory flat');
  t.true(up.peak - up.baseline < 200 * MIB, 'upload memory flat');
});

test.serial(`${CYCLES} tunnel connect/disconnect cycles leave heap and handles flat`, async (t) => {
  const cert = await env.pki.agentCert({ clusterId: 'c2', agentId: 'cycler' });
  const { Agent } = await import('../../agent/index.js');
  const { silentLogger } = await import('../../common/log.js');
  const cycle = async (): Promise<void> => {
    const agent = new Agent({
      gateways: [env.gateway.address],
      serverName: 'localhost',
      connectionsPerGateway: 1,
      tls: { key: cert.key, cert: cert.cert, ca: env.pki.trustBundlePem },
      logger: silentLogger(),
      routes: [{ prefix: '/', upstream: upstream.url }],
    });
    await agent.start();
    await agent.waitForConnections(1);
    await agent.close();
  };
  const warm = Math.min(50, CYCLES);
  for (let i = 0; i < warm; i++) await cycle();
  // Let the gateway reap the last closed session.
  while (env.gateway.tunnels.count('c2') > 0) await new Promise((resolve) => setTimeout(resolve, 5));
  gc();
  const heapBefore = process.memoryUsage().heapUsed;
  const handlesBefore = process.getActiveResourcesInfo().length;
  for (let i = 0; i < CYCLES; i++) await cycle();
  while (env.gateway.tunnels.count('c2') > 0) await new Promise((resolve) => setTimeout(resolve, 5));
  gc();
  const heapAfter = process.memoryUsage().heapUsed;
  const handlesAfter = process.getActiveResourcesInfo().length;
  t.log(`heap ${(heapBefore / MIB).toFixed(1)} → ${(heapAfter / MIB).toFixed(1)} MiB, handles ${handlesBefore} → ${handlesAfter}`);
  t.true(handlesAfter <= handlesBefore, 'no handle growth');
  t.true(heapAfter - heapBefore < 16 * MIB, 'heap flat');
});
