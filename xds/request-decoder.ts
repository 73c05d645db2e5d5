/**
 * A faster decoder for SotW `DiscoveryRequest`s. An Envoy ACK repeats every subscribed name (a
 * thousand EDS names is common), and thousands of clients send the same list: decoding those
 * strings again for every ACK is most of the server's cost after a change. Here the bytes of the
 * `resource_names` run are looked up in a small cache of recently decoded lists (shared arrays,
 * never mutated), and only the other fields are decoded.
 */
import { create, fromBinary } from '@bufbuild/protobuf';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import { NodeSchema } from './gen/envoy/config/core/v3/base_pb.js';
import type { Node } from './gen/envoy/config/core/v3/base_pb.js';
import { DiscoveryRequestSchema } from './gen/envoy/service/discovery/v3/discovery_pb.js';
import type { DiscoveryRequest } from './gen/envoy/service/discovery/v3/discovery_pb.js';
import { StatusSchema } from './gen/google/rpc/status_pb.js';
import type { Status } from './gen/google/rpc/status_pb.js';

const CACHE_MAX = 256;
const CACHE_MIN_BYTES = 256;
const cache = new Map<string, string[]>();

export function decodeDiscoveryRequest(bytes: Uint8Array): DiscoveryRequest {
  const reader = new BinaryReader(bytes);
  let versionInfo = '';
  let typeUrl = '';
  let responseNonce = '';
  let node: Node | undefined;
  let errorDetail: Status | undefined;
  let namesStart = -1;
  let namesEnd = -1;
  let namesContiguous = true;
  let names: string[] = [];
  let other = false;
  while (reader.pos < reader.len) {
    const tagStart = reader.pos;
    const [field, wire] = reader.tag();
    if (wire !== WireType.LengthDelimited) {
      other = true;
      reader.skip(wire, field);
      continue;
    }
    switch (field) {
      case 1:
        versionInfo = reader.string();
        break;
      case 2:
        node = fromBinary(NodeSchema, reader.bytes());
        break;
      case 3:
        // Skipped here; decoded (or found in the cache) below.
        if (namesStart === -1) namesStart = tagStart;
        else if (namesEnd !== tagStart) namesContiguous = false;
        reader.skip(wire, field);
        namesEnd = reader.pos;
        break;
      case 4:
        typeUrl = reader.string();
        break;
      case 5:
        responseNonce = reader.string();
        break;
      case 6:
        errorDetail = fromBinary(StatusSchema, reader.bytes());
        break;
      default:
        other = true;
        reader.skip(wire, field);
    }
  }
  // Fields we do not read here (resource_locators, unknown ones), or a split name list: decode
  // the ordinary way.
  if (other || !namesContiguous) return fromBinary(DiscoveryRequestSchema, bytes);
  if (namesStart !== -1) {
    const region = bytes.subarray(namesStart, namesEnd);
    const key = region.byteLength >= CACHE_MIN_BYTES ? Buffer.from(region.buffer, region.byteOffset, region.byteLength).toString('latin1') : null;
    const cached = key === null ? undefined : cache.get(key);
    if (cached !== undefined) {
      names = cached;
    } else {
      const sub = new BinaryReader(region);
      while (sub.pos < sub.len) {
        sub.tag();
        names.push(sub.string());
      }
      if (key !== null) {
        if (cache.size >= CACHE_MAX) cache.clear();
        cache.set(key, names);
      }
    }
  }
  const request = create(DiscoveryRequestSchema, { versionInfo, typeUrl, responseNonce });
  request.resourceNames = names;
  if (node !== undefined) request.node = node;
  if (errorDetail !== undefined) request.errorDetail = errorDetail;
  return request;
}
