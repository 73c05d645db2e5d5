import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { Client, credentials, Metadata, status } from '@grpc/grpc-js';
import type { ServiceError } from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import type { DescMethodUnary, DescMessage, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import { DevOidcIssuer } from '../../certs/dev-oidc-issuer.js';
import { parseControlConfig } from '../../control/config.js';
import * as pb from '../../control/gen/tether/control/v1/control_pb.js';
import { CODE_TRAILER } from '../../control/grpc-api.js';
import { ControlServer } from '../../control/server.js';
import { newKek } from '../../control/store/keyring.js';
import { methodPath, serializerFor, deserializerFor } from '../../xds/grpc-service.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';

failOnLeaks(test);

const AUDIENCE = 'tether-control';

interface Env {
  issuer: DevOidcIssuer;
  server: ControlServer;
  client: Client;
  dir: string;
}

let env: Env;

test.before(async () => {
  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  const pki = await createTestPki();
  const serverCert = await pki.gatewayCert();
  const dir = mkdtempSync(join(tmpdir(), 'tether-control-api-'));
  writeFileSync(join(dir, 'cert.pem'), serverCert.cert);
  writeFileSync(join(dir, 'key.pem'), serverCert.key, { mode: 0o600 });
  const config = parseControlConfig(
    {
      org: 'acme',
      store: { path: ':memory:' },
      grpc: { port: 0, tls: { cert: 'cert.pem', key: 'key.pem' } },
      http: { port: 0 },
      admin: { port: 0 },
      auth: { issuers: [{ issuer: issuerUrl, audience: AUDIENCE }] },
      bootstrapAdmins: ['alice'],
    },
    dir,
  );
  const server = await ControlServer.start(config, { env: { TETHER_CONTROL_KEK: newKek().key.toString('base64') } });
  const client = new Client(`localhost:${server.grpcPort}`, credentials.createSsl(Buffer.from(serverCert.ca)));
  env = { issuer, server, client, dir };
});

test.after.always(async () => {
  env.client.close();
  await env.server.drain(1_000);
  await env.issuer.close();
  rmSync(env.dir, { recursive: true, force: true });
});

const token = (subject: string, audience = AUDIENCE): Promise<string> => env.issuer.mint({ subject, audience });

async function http(path: string, body: unknown, bearer?: string): Promise<{ status: number; json: Record<string, unknown> }> {
  const response = await fetch(`http://127.0.0.1:${env.server.httpPort}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(bearer === undefined ? {} : { authorization: `Bearer ${bearer}` }) },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: response.status, json: (await response.json()) as Record<string, unknown> };
}

function grpcCall<I extends DescMessage, O extends DescMessage>(method: DescMethodUnary<I, O>, request: MessageInitShape<I>, bearer: string): Promise<MessageShape<O>> {
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${bearer}`);
  return new Promise((resolve, reject) => {
    env.client.makeUnaryRequest(methodPath(method), serializerFor(method.input), deserializerFor(method.output), create(method.input, request), metadata, (error, value) => {
      if (error !== null) reject(error);
      else if (value === undefined) reject(new Error('no response'));
      else resolve(value);
    });
  });
}

async function grpcError(promise: Promise<unknown>): Promise<{ code: status; tether: string }> {
  try {
    await promise;
  } catch (reason) {
    const error = reason as ServiceError;
    return { code: error.code, tether: String(error.metadata?.get(CODE_TRAILER)[0] ?? '') };
  }
  throw new Error('call succeeded');
}

const SCOPE = { org: 'acme', project: 'p1', domain: 'dev' };

test.serial('JSON over HTTP: authenticated, authorised and audited calls; refusals with their codes', async (t) => {
  const alice = await token('alice');
  t.like(await http('/tether.control.v1.RunService/ListRuns', { org: 'acme' }), { status: 401, json: { code: 'CONTROL_UNAUTHENTICATED' } });
  t.like(await http('/tether.control.v1.RunService/ListRuns', { org: 'acme' }, await token('alice', 'someone-else')), { status: 401, json: { code: 'CONTROL_UNAUTHENTICATED' } });
  t.like(await http('/tether.control.v1.RunService/ListRuns', { org: 'acme' }, 'not-a-jwt'), { status: 401 });

  const cluster = await http(
    '/tether.control.v1.ClusterService/RegisterCluster',
    { cluster: { id: 'c1', org: 'acme', mode: 'CLUSTER_MODE_TUNNEL', endpoint: 'https://c1.tunnel.example', issuer: 'https://oidc.c1.example', audience: 'tether', allowedSubjects: ['system:serviceaccount:tether:agent'] } },
    alice,
  );
  t.is(cluster.status, 200, JSON.stringify(cluster.json));
  const task = await http('/tether.control.v1.TaskService/RegisterTask', { scope: SCOPE, name: 'hello', version: 'v1', spec: { command: 'echo', args: ['hi'], env: { A: 'b' } } }, alice);
  t.like(task, { status: 200, json: { created: true } });
  t.like(await http('/tether.control.v1.TaskService/RegisterTask', { scope: SCOPE, name: 'hello', version: 'v1', spec: { command: 'echo', args: ['hi'], env: { A: 'b' } } }, alice), { status: 200 });
  t.like(await http('/tether.control.v1.TaskService/RegisterTask', { scope: SCOPE, name: 'hello', version: 'v1', spec: { command: 'echo', args: ['bye'] } }, alice), {
    status: 409, json: { code: 'TASK_VERSION_CONFLICT' },
  });
  const created = await http('/tether.control.v1.RunService/CreateRun', { scope: SCOPE, taskName: 'hello', taskVersion: 'v1', inputs: { data: 's3://bucket/in' } }, alice);
  t.is(created.status, 200, JSON.stringify(created.json));
  const run = created.json.run as { id: string; phase: string; clusterId: string };
  t.is(run.phase, 'PHASE_QUEUED');
  t.is(run.clusterId, 'c1');
  t.like(await http('/tether.control.v1.RunService/CreateRun', { scope: SCOPE, taskName: 'hello', taskVersion: 'v1', inputs: { data: 'aGVsbG8gd29ybGQ=' } }, alice), {
    status: 422, json: { code: 'METADATA_PAYLOAD_REFUSED' },
  });
  const huge = JSON.stringify({ scope: SCOPE, taskName: 'hello', taskVersion: 'v1', inputs: { data: `s3://b/${'x'.repeat(300 * 1024)}` } });
  t.like(await http('/tether.control.v1.RunService/CreateRun', huge, alice), { status: 413, json: { code: 'CONTROL_REQUEST_TOO_LARGE' } });
  t.like(await http('/tether.control.v1.RunService/CreateRun', '{"scope": 7}', alice), { status: 400, json: { code: 'CONTROL_INVALID_ARGUMENT' } });
  t.like(await http('/tether.control.v1.ClusterService/SelectCluster', { scope: SCOPE, runId: run.id, operation: 'CREATE_DOWNLOAD_LINK' }, alice), {
    status: 200, json: { clusterId: 'c1', clusterEndpoint: 'https://c1.tunnel.example', mode: 'CLUSTER_MODE_TUNNEL' },
  });

  // Events and history over JSON.
  const report = await http('/tether.control.v1.RunService/ReportEvents', { org: 'acme', clusterId: 'c1', events: [{ runId: run.id, phase: 'PHASE_RUNNING' }, { runId: run.id, phase: 'PHASE_RUNNING' }, { runId: run.id, phase: 'PHASE_QUEUED' }] }, alice);
  t.deepEqual((report.json.outcomes as Array<{ status: string; code?: string }>).map((o) => o.code ?? o.status), ['APPLIED', 'DUPLICATE', 'PHASE_BACKWARDS']);
  const history = await http('/tether.control.v1.RunService/GetPhaseHistory', { runId: run.id }, alice);
  t.deepEqual((history.json.events as Array<{ phase: string }>).map((e) => e.phase), ['PHASE_RUNNING']);

  // A user with no binding is refused; after a Viewer binding they can read but not write.
  const bob = await token('bob');
  t.like(await http('/tether.control.v1.RunService/GetRun', { runId: run.id }, bob), { status: 403, json: { code: 'CONTROL_PERMISSION_DENIED' } });
  t.like(await http('/tether.control.v1.AccessService/Bind', { principal: 'user:bob', role: 'Viewer', scope: { org: 'acme', project: 'p1' } }, alice), { status: 200 });
  t.like(await http('/tether.control.v1.RunService/GetRun', { runId: run.id }, bob), { status: 200 });
  t.like(await http('/tether.control.v1.RunService/AbortRun', { runId: run.id }, bob), { status: 403 });
  t.like(await http('/tether.control.v1.AccessService/WhoAmI', { scope: SCOPE }, bob), { status: 200, json: { subject: 'bob', roles: ['Viewer'] } });

  // The gateway's question: may this subject reach this project's data?
  t.like(await http('/tether.control.v1.AccessService/Check', { operation: 'data.read', scope: SCOPE }, bob), { status: 200, json: { allowed: true, roles: ['Viewer'] } });
  t.like(await http('/tether.control.v1.AccessService/Check', { subject: 'alice', operation: 'data.read', scope: SCOPE }, bob), { status: 403 });
  t.like(await http('/tether.control.v1.AccessService/Check', { subject: 'bob', operation: 'data.write', scope: SCOPE }, alice), { status: 200, json: { roles: ['Viewer'] } });
  t.is((await http('/tether.control.v1.AccessService/Check', { subject: 'bob', operation: 'data.write', scope: SCOPE }, alice)).json.allowed, undefined);
  t.like(await http('/tether.control.v1.AccessService/Check', { subject: 'bob', operation: 'data.read', scope: { org: 'acme', project: 'p2', domain: 'dev' } }, alice), { status: 200, json: { roles: undefined } });
  t.like(await http('/tether.control.v1.AccessService/Check', { operation: 'launch.missiles', scope: SCOPE }, alice), { status: 400, json: { code: 'CONTROL_INVALID_ARGUMENT' } });
  // No CA configured here: the identity exchange is off, and says so.
  t.like(await http('/tether.control.v1.IdentityService/ExchangeToken', { token: 'x', csrPem: 'y', clusterId: 'c1', agentId: 'a1' }), { status: 501, json: { code: 'IDENTITY_EXCHANGE_DISABLED' } });
  const audit = await http('/tether.control.v1.AuditService/ListAudit', { org: 'acme', limit: 200 }, alice);
  const records = audit.json.records as Array<{ principal: string; operation: string; result: string }>;
  // A refusal before any org is known is recorded, but is no org's row: an org's admin does not read it.
  t.falsy(records.find((r) => r.principal === 'anonymous'));
  const unscoped = await env.server.store.listAudit({ org: '', principal: 'anonymous' }, 50, '');
  t.truthy(unscoped.items.find((r) => r.operation === 'RunService.ListRuns' && r.result === 'CONTROL_UNAUTHENTICATED'));
  t.truthy(records.find((r) => r.principal === 'user:bob' && r.operation === 'run.read' && r.result === 'CONTROL_PERMISSION_DENIED'));
  t.truthy(records.find((r) => r.principal === 'user:alice' && r.operation === 'run.create' && r.result === 'OK'));
  t.like(await http('/tether.control.v1.AuditService/ListAudit', { org: 'acme' }, bob), { status: 403 });
});

test.serial('gRPC over TLS: the same handlers; codes travel in the tether-code trailer', async (t) => {
  const alice = await token('alice');
  const created = await grpcCall(pb.RunService.method.createRun, { scope: SCOPE, taskName: 'hello', taskVersion: 'v1', inputs: { data: 'gs://bucket/in' } }, alice);
  t.is(created.run?.phase, pb.Phase.QUEUED);
  const fetched = await grpcCall(pb.RunService.method.getRun, { runId: created.run!.id }, alice);
  t.is(fetched.run?.inputs.data, 'gs://bucket/in');
  const aborted = await grpcCall(pb.RunService.method.abortRun, { runId: created.run!.id, reason: 'test' }, alice);
  t.is(aborted.run?.phase, pb.Phase.ABORTED);
  t.deepEqual(await grpcError(grpcCall(pb.RunService.method.getRun, { runId: created.run!.id }, await token('carol'))), { code: status.PERMISSION_DENIED, tether: 'CONTROL_PERMISSION_DENIED' });
  t.deepEqual(await grpcError(grpcCall(pb.RunService.method.createRun, { scope: SCOPE, taskName: 'hello', taskVersion: 'v1', inputs: { data: 'ftp://x/y' } }, alice)), {
    code: status.INVALID_ARGUMENT, tether: 'METADATA_URI_SCHEME',
  });
  t.deepEqual(await grpcError(grpcCall(pb.RunService.method.abortRun, { runId: created.run!.id }, alice)), { code: status.FAILED_PRECONDITION, tether: 'PHASE_TERMINAL' });
  t.deepEqual(await grpcError(grpcCall(pb.RunService.method.getRun, { runId: 'x' }, 'garbage')), { code: status.UNAUTHENTICATED, tether: 'CONTROL_UNAUTHENTICATED' });
  const listed = await grpcCall(pb.RunService.method.listRuns, { org: 'acme', project: 'p1', limit: 1 }, alice);
  t.is(listed.runs.length, 1);
  t.not(listed.nextPageToken, '');
});

test.serial('the admin server exposes per-method request counts by code', async (t) => {
  const text = await (await fetch(`http://127.0.0.1:${env.server.adminPort}/metrics`)).text();
  t.regex(text, /tether_control_requests_total\{method="RunService.CreateRun",code="OK"\} [1-9]/);
  t.regex(text, /tether_control_requests_total\{method="RunService.ListRuns",code="CONTROL_UNAUTHENTICATED"\} [1-9]/);
});
