/**
 * DESIGN I2 (metadata only), measured on the wire: a 32 MiB input goes in and a 32 MiB output
 * comes out of a run through signed URLs, while every byte the control plane sends or receives —
 * the client's API calls and the agent's outbound channel — crosses a counting tap. The control
 * plane sees only metadata: a few KiB, never the payload.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { downloadToFile, fileMd5, uploadFile } from '../../agent/dataproxy/index.js';
import { Orchestration } from '../../agent/orchestration.js';
import { CertificateSource, DevOidcIssuer } from '../../certs/index.js';
import { parseControlConfig } from '../../control/config.js';
import { ControlServer } from '../../control/server.js';
import { newKek } from '../../control/store/keyring.js';
import { failOnLeaks } from '../helpers/leaks.js';
import { createTestPki } from '../helpers/pki.js';
import { TcpTap } from '../helpers/tcp-tap.js';

failOnLeaks(test);

const PAYLOAD_BYTES = 32 * 1024 * 1024;
/** Everything the control plane may see for this whole scenario: requests, phases, URIs. */
const CONTROL_BUDGET_BYTES = 256 * 1024;
const RUN_DEADLINE_MS = 60_000;

test('a 32 MiB input and output move through signed URLs; the control plane sees only metadata', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tether-metadata-only-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const pki = await createTestPki();
  const issuer = new DevOidcIssuer();
  const issuerUrl = await issuer.listen();
  t.teardown(() => issuer.close());
  const control = await ControlServer.start(
    parseControlConfig({
      org: 'acme',
      store: { path: join(dir, 'control.db') },
      grpc: { port: 0 },
      http: { port: 0 },
      auth: { issuers: [{ issuer: issuerUrl, audience: 'tether' }] },
      bootstrapAdmins: ['alice'],
      agents: { port: 0 },
      scheduler: { enabled: false },
    }),
    { ca: pki.ca, env: { TETHER_CONTROL_KEK: newKek().key.toString('base64') } },
  );
  t.teardown(() => control.close());
  const apiTap = new TcpTap({ host: '127.0.0.1', port: control.httpPort });
  const agentTap = new TcpTap({ host: '127.0.0.1', port: control.agentPort });
  const apiPort = await apiTap.listen();
  const agentPort = await agentTap.listen();
  t.teardown(() => apiTap.close());
  t.teardown(() => agentTap.close());

  const token = await issuer.mint({ subject: 'alice', audience: 'tether' });
  const call = async <T>(method: string, body: unknown): Promise<T> => {
    const response = await fetch(`http://127.0.0.1:${apiPort}/tether.control.v1.${method}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, connection: 'close' },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method}: ${response.status} ${text}`);
    return JSON.parse(text) as T;
  };

  const certificates = new CertificateSource({
    issue: (csrPem) => pki.ca.signCsr(csrPem, { kind: 'workload', clusterId: 'c1', agentId: 'a1' }),
  });
  await certificates.start();
  t.teardown(() => certificates.close());
  const orchestration = await Orchestration.start({
    controlAddress: `localhost:${agentPort}`,
    agentId: 'a1',
    certificates,
    trustBundlePem: pki.ca.trustBundlePem(),
    workDir: join(dir, 'runs'),
    dataproxy: { root: join(dir, 'blobs'), bucket: 'c1-data', clusterId: 'c1', signingKeys: [randomBytes(32)] },
  });
  t.teardown(() => orchestration.close());

  const scope = { org: 'acme', project: 'p1', domain: 'dev' };
  await call('ClusterService/RegisterCluster', {
    cluster: { id: 'c1', org: 'acme', mode: 'CLUSTER_MODE_TUNNEL', endpoint: 'c1.example', issuer: issuerUrl, audience: 'x', allowedSubjects: ['s'] },
  });
  await call('TaskService/RegisterTask', {
    scope,
    name: 'copy',
    version: 'v1',
    spec: { command: 'sh', args: ['-c', 'cp "$TETHER_INPUTS_DIR/blob" "$TETHER_OUTPUTS_DIR/blob.out"'], timeoutSec: 120 },
  });

  // The client uploads straight to the data plane's object store with a signed URL.
  const payload = randomBytes(PAYLOAD_BYTES);
  const inputFile = join(dir, 'input.bin');
  await writeFile(inputFile, payload);
  const { md5, size } = await fileMd5(inputFile);
  const upload = await orchestration.data.dataproxy.createUploadLocation({ project: 'p1', domain: 'dev', filename: 'blob', contentMd5: md5, contentLength: size });
  await uploadFile(upload.signedUrl, upload.headers, inputFile);

  await call('RunService/CreateRun', { scope, taskName: 'copy', taskVersion: 'v1', runId: 'big-1', inputs: { blob: upload.nativeUrl } });
  // The control plane offers no push to HTTP clients: poll the run's phase, bounded.
  const deadline = Date.now() + RUN_DEADLINE_MS;
  let run: { phase: string; outputs?: Record<string, string>; error?: unknown } = { phase: '' };
  while (Date.now() < deadline) {
    run = (await call<{ run: typeof run }>('RunService/GetRun', { runId: 'big-1' })).run;
    if (/SUCCEEDED|FAILED|TIMED_OUT|ABORTED/.test(run.phase)) break;
    await new Promise<void>((resolve) => setTimeout(resolve, 200));
  }
  t.is(run.phase, 'PHASE_SUCCEEDED', JSON.stringify(run));
  const outputUri = run.outputs?.['blob.out'];
  t.truthy(outputUri, JSON.stringify(run));

  const link = await orchestration.data.dataproxy.createDownloadLink({ uri: outputUri as string });
  const outputFile = join(dir, 'output.bin');
  await downloadToFile(link.signedUrl, outputFile);
  const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');
  t.is(sha(await readFile(outputFile)), sha(payload));

  await orchestration.client.whenIdle();
  const seen = apiTap.total + agentTap.total;
  t.true(apiTap.connections > 0 && agentTap.connections > 0, 'both control-plane sockets were used');
  t.true(
    seen < CONTROL_BUDGET_BYTES,
    `control plane sockets carried ${seen} bytes (API ${apiTap.total}, agents' channel ${agentTap.total}) for ${2 * PAYLOAD_BYTES} payload bytes`,
  );
  t.log(`payload moved: ${(2 * PAYLOAD_BYTES) / 2 ** 20} MiB; control-plane bytes: API ${apiTap.total}, agents' channel ${agentTap.total}`);
});
