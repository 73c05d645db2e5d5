import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as https from 'node:https';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer, type ClientOptions } from 'ws';
import { failOnLeaks } from '../helpers/leaks.js';
import { closeH2, connectH2, splitHostPort } from '../helpers/tunnel-clients.js';
import { startTunnelEnv, type TunnelEnv } from '../helpers/tunnel-env.js';
import { startTcpEcho, type Upstream } from '../helpers/tunnel-upstreams.js';

failOnLeaks(test);

const passthrough = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };
const definition: grpc.ServiceDefinition = {
  unary: { path: '/test.Echo/Unary', requestStream: false, responseStream: false, requestSerialize: passthrough.serialize, requestDeserialize: passthrough.deserialize, responseSerialize: passthrough.serialize, responseDeserialize: passthrough.deserialize },
  bidi: { path: '/test.Echo/Bidi', requestStream: true, responseStream: true, requestSerialize: passthrough.serialize, requestDeserialize: passthrough.deserialize, responseSerialize: passthrough.serialize, responseDeserialize: passthrough.deserialize },
};

let env: TunnelEnv;
let grpcServer: grpc.Server;
let grpcPort = 0;
let wsHttp: http.Server;
let wss: WebSocketServer;
let tcp: Upstream;

test.before(async () => {
  grpcServer = new grpc.Server();
  grpcServer.addService(definition, {
    unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      const text = call.request.toString();
      if (text === 'fail') {
        callback({ code: grpc.status.NOT_FOUND, details: 'no such thing' });
        return;
      }
      const md = new grpc.Metadata();
      md.set('x-trailer', 'kept');
      callback(null, Buffer.from(`echo:${text}:${String(call.metadata.get('tether-subject')[0])}`), md);
    },
    bidi: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      call.on('data', (b: Buffer) => call.write(Buffer.from(`re:${b.toString()}`)));
      call.on('end', () => {
        const md = new grpc.Metadata();
        md.set('x-count', 'done');
        call.end(md);
      });
    },
  });
  grpcPort = await new Promise<number>((resolve, reject) =>
    grpcServer.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))),
  );
  wsHttp = http.createServer();
  wss = new WebSocketServer({ server: wsHttp });
  wss.on('connection', (socket, req) => {
    socket.on('message', (data, binary) => socket.send(binary ? data : `echo:${data.toString()}:${String(req.headers['tether-subject'])}`, { binary }));
  });
  await new Promise<void>((resolve) => wsHttp.listen(0, '127.0.0.1', resolve));
  const wsPort = (wsHttp.address() as { port: number }).port;
  tcp = await startTcpEcho();
  env = await startTunnelEnv({
    agents: [
      {
        clusterId: 'c1',
        routes: [
          { prefix: '/test.Echo/', upstream: `h2c://127.0.0.1:${grpcPort}` },
          { prefix: '/ws', upstream: `http://127.0.0.1:${wsPort}` },
        ],
        tcpTargets: [tcp.url],
      },
    ],
  });
});

test.after.always(async () => {
  await env?.close();
  await new Promise<void>((resolve) => grpcServer.tryShutdown(() => resolve()));
  for (const c of wss?.clients ?? []) c.terminate();
  await new Promise<void>((resolve) => wss.close(() => resolve()));
  wsHttp.closeAllConnections();
  await new Promise<void>((resolve) => wsHttp.close(() => resolve()));
  await tcp?.close();
});

async function grpcClient(): Promise<{ client: grpc.Client; md: grpc.Metadata }> {
  const Ctor = grpc.makeGenericClientConstructor(definition, 'Echo');
  const client = new Ctor(env.gateway.address, grpc.credentials.createSsl(Buffer.from(env.pki.trustBundlePem)), {
    'grpc.ssl_target_name_override': 'localhost',
    'grpc.default_authority': 'localhost',
  });
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${await env.token(['c1'], 'grpc-user')}`);
  md.set('tether-cluster', 'c1');
  return { client, md };
}

test('gRPC unary: response, trailing metadata and error status survive the tunnel', async (t) => {
  const { client, md } = await grpcClient();
  try {
    const ok = await new Promise<{ value: Buffer; trailers: grpc.Metadata }>((resolve, reject) => {
      let trailers = new grpc.Metadata();
      const call = client.makeUnaryRequest('/test.Echo/Unary', passthrough.serialize, passthrough.deserialize, Buffer.from('hi'), md, (err, value) =>
        err ? reject(err) : setImmediate(() => resolve({ value: value as Buffer, trailers })),
      );
      call.on('status', (s: grpc.StatusObject) => {
        trailers = s.metadata;
      });
    });
    t.is(ok.value.toString(), 'echo:hi:grpc-user');
    t.deepEqual(ok.trailers.get('x-trailer'), ['kept']);
    const err = await new Promise<grpc.ServiceError>((resolve) =>
      client.makeUnaryRequest('/test.Echo/Unary', passthrough.serialize, passthrough.deserialize, Buffer.from('fail'), md, (e) => resolve(e as grpc.ServiceError)),
    );
    t.is(err.code, grpc.status.NOT_FOUND);
    t.is(err.details, 'no such thing');
  } finally {
    client.close();
  }
});

test('gRPC bidi streaming with trailers', async (t) => {
  const { client, md } = await grpcClient();
  try {
    const call = client.makeBidiStreamRequest('/test.Echo/Bidi', passthrough.serialize, passthrough.deserialize, md);
    const got: string[] = [];
    const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
    call.on('data', (b: Buffer) => got.push(b.toString()));
    for (let i = 0; i < 50; i++) call.write(Buffer.from(`m${i}`));
    call.end();
    const s = await status;
    t.is(s.code, grpc.status.OK);
    t.deepEqual(s.metadata.get('x-count'), ['done']);
    t.is(got.length, 50);
    t.is(got[49], 're:m49');
  } finally {
    client.close();
  }
});

test('gRPC against a cluster without a tunnel fails with UNAVAILABLE', async (t) => {
  const { client } = await grpcClient();
  try {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${await env.token(['c2'])}`);
    md.set('tether-cluster', 'c2');
    const err = await new Promise<grpc.ServiceError>((resolve) =>
      client.makeUnaryRequest('/test.Echo/Unary', passthrough.serialize, passthrough.deserialize, Buffer.from('x'), md, (e) => resolve(e as grpc.ServiceError)),
    );
    t.is(err.code, grpc.status.UNAVAILABLE);
  } finally {
    client.close();
  }
});

test('WebSocket (HTTP/1.1 Upgrade at the gateway, RFC 8441 on the tunnel) echoes text and binary', async (t) => {
  const token = await env.token(['c1'], 'ws-user');
  const [host, port] = splitHostPort(env.gateway.address);
  const ws = new WebSocket(`wss://${host}:${port}/ws`, wsOptions({ authorization: `Bearer ${token}`, 'tether-cluster': 'c1' }));
  try {
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    const next = (): Promise<{ data: Buffer; binary: boolean }> =>
      new Promise((resolve) => ws.once('message', (data, binary) => resolve({ data: data as Buffer, binary })));
    const p1 = next();
    ws.send('hello');
    t.is((await p1).data.toString(), 'echo:hello:ws-user');
    const big = Buffer.alloc(200_000, 3);
    const p2 = next();
    ws.send(big);
    const r2 = await p2;
    t.true(r2.binary);
    t.true(r2.data.equals(big));
  } finally {
    const closed = new Promise((resolve) => ws.once('close', resolve));
    ws.close();
    await closed;
  }
});

test('WebSocket without a token is refused with 401', async (t) => {
  const [host, port] = splitHostPort(env.gateway.address);
  const ws = new WebSocket(`wss://${host}:${port}/ws`, wsOptions({ 'tether-cluster': 'c1' }));
  const status = await new Promise<number>((resolve) => {
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
    });
    ws.once('error', () => resolve(-1));
  });
  ws.terminate();
  t.is(status, 401);
});

function wsOptions(headers: Record<string, string>): ClientOptions {
  // `servername` is passed through to tls.connect; ws's types do not list it.
  return { ca: env.pki.trustBundlePem, headers, ...({ servername: 'localhost' } as object) };
}

function h1Connect(target: string, token: string): Promise<{ status: number; socket: Duplex; headers: http.IncomingHttpHeaders }> {
  const [host, port] = splitHostPort(env.gateway.address);
  return new Promise((resolve, reject) => {
    const req = https.request({ host, port, servername: 'localhost', ca: env.pki.trustBundlePem, method: 'CONNECT', path: target, headers: { authorization: `Bearer ${token}`, 'tether-cluster': 'c1' }, agent: false });
    req.once('connect', (res: http.IncomingMessage, socket: Duplex) => resolve({ status: res.statusCode ?? 0, socket, headers: res.headers }));
    req.once('response', (res: http.IncomingMessage) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, socket: res.socket, headers: res.headers });
    });
    req.once('error', reject);
    req.end();
  });
}

function echoOnce(socket: Duplex, payload: Buffer): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let n = 0;
    const onData = (c: Buffer): void => {
      chunks.push(c);
      n += c.length;
      if (n >= payload.length) {
        socket.off('data', onData);
        resolve(Buffer.concat(chunks));
      }
    };
    socket.on('data', onData);
    socket.write(payload);
  });
}

test('raw TCP through HTTP/1.1 CONNECT and HTTP/2 CONNECT', async (t) => {
  const token = await env.token(['c1']);
  const { status, socket } = await h1Connect(tcp.url, token);
  t.is(status, 200);
  const payload = Buffer.alloc(100_000, 9);
  t.true((await echoOnce(socket, payload)).equals(payload));
  socket.destroy();

  const session = await connectH2(env.gateway.url, env.pki.trustBundlePem);
  try {
    const stream = session.request({ ':method': 'CONNECT', ':authority': tcp.url, authorization: `Bearer ${token}`, 'tether-cluster': 'c1' });
    const code = await new Promise<number>((resolve) => stream.once('response', (h) => resolve(Number(h[':status']))));
    t.is(code, 200);
    t.true((await echoOnce(stream, payload)).equals(payload));
    stream.close(http2.constants.NGHTTP2_CANCEL);
  } finally {
    await closeH2(session);
  }
});

test('CONNECT to a target outside the agent allow-list is refused with 403 TCP_TARGET_FORBIDDEN', async (t) => {
  const token = await env.token(['c1']);
  const { status, headers, socket } = await h1Connect('127.0.0.1:22', token);
  socket.destroy();
  t.is(status, 403);
  t.is(headers['tether-error'], 'TCP_TARGET_FORBIDDEN');
});

test('WebSocket from an HTTP/2 client (RFC 8441 extended CONNECT end to end)', async (t) => {
  const token = await env.token(['c1'], 'h2-ws');
  const session = await connectH2(env.gateway.url, env.pki.trustBundlePem);
  try {
    // The gateway advertises SETTINGS_ENABLE_CONNECT_PROTOCOL.
    if (session.remoteSettings.enableConnectProtocol !== true) await new Promise((resolve) => session.once('remoteSettings', resolve));
    t.true(session.remoteSettings.enableConnectProtocol);
    const stream = session.request({ ':method': 'CONNECT', ':protocol': 'websocket', ':path': '/ws', ':scheme': 'https', ':authority': 'localhost', 'sec-websocket-version': '13', authorization: `Bearer ${token}`, 'tether-cluster': 'c1' });
    const status = await new Promise<number>((resolve) => stream.once('response', (h) => resolve(Number(h[':status']))));
    t.is(status, 200);
    const payload = Buffer.from('hi');
    const mask = Buffer.from([1, 2, 3, 4]);
    const masked = Buffer.from(payload.map((b, i) => b ^ (mask[i % 4] as number)));
    const expected = 'echo:hi:h2-ws';
    const reply = new Promise<Buffer>((resolve) => {
      let got = Buffer.alloc(0);
      stream.on('data', (c: Buffer) => {
        got = Buffer.concat([got, c]);
        if (got.length >= 2 + expected.length) resolve(got);
      });
    });
    stream.write(Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]));
    const frame = await reply;
    t.is(frame[0], 0x81);
    t.is(frame.subarray(2, 2 + expected.length).toString(), expected);
    stream.close(http2.constants.NGHTTP2_CANCEL);
  } finally {
    await closeH2(session);
  }
});
