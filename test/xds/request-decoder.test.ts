/** The caching SotW request decoder agrees with protobuf-es on every field. */
import test from 'ava';
import { create, equals, toBinary } from '@bufbuild/protobuf';
import { DiscoveryRequestSchema } from '../../xds/gen/envoy/service/discovery/v3/discovery_pb.js';
import { decodeDiscoveryRequest } from '../../xds/request-decoder.js';
import { envoyNode } from '../helpers/ads-client.js';
import { TypeUrl } from '../../xds/resource-types.js';

const many = Array.from({ length: 300 }, (_, i) => `service-${i}`);

test('decodes like fromBinary, with and without node, error_detail and long name lists', (t) => {
  const cases = [
    create(DiscoveryRequestSchema, { node: envoyNode(), typeUrl: TypeUrl.cluster }),
    create(DiscoveryRequestSchema, { typeUrl: TypeUrl.endpoint, resourceNames: many, versionInfo: 'v1', responseNonce: 'n1' }),
    create(DiscoveryRequestSchema, { typeUrl: TypeUrl.endpoint, resourceNames: ['a', 'b'], errorDetail: { code: 3, message: 'bad' } }),
    create(DiscoveryRequestSchema, { typeUrl: TypeUrl.endpoint, resourceLocators: [{ name: 'x' }] }),
  ];
  for (const request of cases) t.true(equals(DiscoveryRequestSchema, decodeDiscoveryRequest(toBinary(DiscoveryRequestSchema, request)), request));
});

test('repeated long name lists are decoded once and shared', (t) => {
  const bytes = toBinary(DiscoveryRequestSchema, create(DiscoveryRequestSchema, { typeUrl: TypeUrl.endpoint, resourceNames: many, responseNonce: 'a' }));
  const other = toBinary(DiscoveryRequestSchema, create(DiscoveryRequestSchema, { typeUrl: TypeUrl.endpoint, resourceNames: many, responseNonce: 'b' }));
  const first = decodeDiscoveryRequest(bytes);
  const second = decodeDiscoveryRequest(other);
  t.is(first.resourceNames, second.resourceNames);
  t.is(second.responseNonce, 'b');
  const changed = decodeDiscoveryRequest(toBinary(DiscoveryRequestSchema, create(DiscoveryRequestSchema, { typeUrl: TypeUrl.endpoint, resourceNames: [...many.slice(1), 'new'] })));
  t.not(changed.resourceNames, first.resourceNames);
  t.is(changed.resourceNames.at(-1), 'new');
});
