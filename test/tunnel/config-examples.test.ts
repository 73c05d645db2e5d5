import test from 'ava';
import { readFile } from 'node:fs/promises';
import { parse } from 'yaml';
import { agentOptionsSchema } from '../../agent/index.js';
import { parseOptions } from '../../common/options.js';
import { gatewayOptionsSchema } from '../../gateway/index.js';

async function example(path: string): Promise<Record<string, unknown>> {
  const { tls, ...rest } = parse(await readFile(new URL(`../../${path}`, import.meta.url), 'utf8')) as Record<string, unknown>;
  if (typeof tls !== 'object') throw new Error('example without tls');
  return rest;
}

test('the example gateway and agent configs are valid', async (t) => {
  const gateway = parseOptions(gatewayOptionsSchema, await example('gateway/example-config.yaml'), 'gateway');
  t.is(gateway.id, 'gw-1');
  t.deepEqual(gateway.clusters, ['prod-eu', 'prod-us']);
  const agent = parseOptions(agentOptionsSchema, await example('agent/example-config.yaml'), 'agent');
  t.is(agent.connectionsPerGateway, 2);
  t.is(agent.routes.length, 2);
});

test('a bad field is refused with its path', (t) => {
  const error = t.throws(() => parseOptions(agentOptionsSchema, { gateways: ['no-port'] }, 'agent'));
  t.regex(error?.message ?? '', /agent\.gateways\[0\]: expected host:port/);
});
