/**
 * PROXY protocol (HAProxy's spec, versions 1 and 2) as the built-in router's sovereign front reads
 * it: the listener filter's configuration (`envoy.filters.listener.proxy_protocol`) compiled to a
 * policy, a parser for the header, and a bounded reader that takes the header off a fresh
 * connection before anything else reads from it.
 *
 * Version 1 is one text line (`PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, at most 107 bytes);
 * version 2 is a 16-byte binary header (12-byte signature, version/command, family, length) and
 * the addresses, followed by TLVs, which are skipped. `LOCAL` (v2) and `UNKNOWN` (v1) headers carry
 * no client address: the connection's own peer stands in, as in Envoy.
 */
import { isIP } from 'node:net';
import type { Socket } from 'node:net';
import { fromBinary } from '@bufbuild/protobuf';
import type { Any } from '@bufbuild/protobuf/wkt';
import { ProxyProtocolConfig_Version } from '../../xds/gen/envoy/config/core/v3/proxy_protocol_pb.js';
import { ProxyProtocolSchema } from '../../xds/gen/envoy/extensions/filters/listener/proxy_protocol/v3/proxy_protocol_pb.js';
import { PROXY_PROTOCOL_TYPE_URL } from '../../xds/references.js';
import { join, onlyFields } from './fields.js';
import type { Problem } from './fields.js';

/** Refusal codes of the PROXY stage (the connection is closed; no HTTP answer is possible yet). */
export const ProxyProtocolCode = {
  /** The connection's first bytes are not a PROXY header and the listener requires one. */
  REQUIRED: 'PROXY_PROTOCOL_REQUIRED',
  /** A PROXY header that is malformed, too long, of a refused version or an unsupported family. */
  INVALID: 'PROXY_PROTOCOL_INVALID',
  /** No complete header within the deadline. */
  TIMEOUT: 'PROXY_PROTOCOL_TIMEOUT',
  /** The peer closed (or the socket failed) before a complete header. */
  INCOMPLETE: 'PROXY_PROTOCOL_INCOMPLETE',
} as const;

export type ProxyProtocolCode = (typeof ProxyProtocolCode)[keyof typeof ProxyProtocolCode];

export interface ProxyProtocolPolicy {
  /** False only with `allow_requests_without_proxy_protocol`. */
  required: boolean;
  v1: boolean;
  v2: boolean;
}

export interface ProxyEndpoint {
  address: string;
  port: number;
}

export interface ProxyHeader {
  version: 1 | 2;
  /** `PROXY`: relayed connection with addresses; `LOCAL` (v2) / `UNKNOWN` (v1): no addresses. */
  command: 'PROXY' | 'LOCAL' | 'UNKNOWN';
  /** The original client (null for LOCAL/UNKNOWN and v2 AF_UNSPEC). */
  source: ProxyEndpoint | null;
  /** The address the client connected to (the load balancer's frontend). */
  destination: ProxyEndpoint | null;
  /** Header bytes, TLVs included. */
  length: number;
}

export type ParseResult =
  | { state: 'incomplete' }
  | { state: 'done'; header: ProxyHeader }
  /** Not a PROXY header at all (for an optional policy: the bytes belong to TLS). */
  | { state: 'absent' }
  | { state: 'invalid'; message: string };

const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
const V1_MAX = 107;
export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** Largest v2 header accepted (16-byte fixed part + addresses + TLVs). */
export const V2_MAX = 16 + 4096;
const PORT = /^(0|[1-9][0-9]{0,4})$/;

/** Whether `data` could still become `signature` (all of data matches its start). */
function startsAs(data: Buffer, signature: Buffer): boolean {
  const n = Math.min(data.length, signature.length);
  return data.subarray(0, n).equals(signature.subarray(0, n));
}

function parseV1(data: Buffer): ParseResult {
  const end = data.indexOf('\r\n', 0, 'latin1');
  if (end < 0) return data.length >= V1_MAX ? { state: 'invalid', message: `v1 header without CRLF in its first ${V1_MAX} bytes` } : { state: 'incomplete' };
  if (end + 2 > V1_MAX) return { state: 'invalid', message: `v1 header longer than ${V1_MAX} bytes` };
  const line = data.subarray(0, end).toString('latin1');
  const parts = line.split(' ');
  const length = end + 2;
  if (parts[1] === 'UNKNOWN') return { state: 'done', header: { version: 1, command: 'UNKNOWN', source: null, destination: null, length } };
  if (parts.length !== 6) return { state: 'invalid', message: `v1 header "${line}": expected PROXY TCP4|TCP6 <src> <dst> <sport> <dport>` };
  const [, family, src, dst, sport, dport] = parts as [string, string, string, string, string, string];
  const want = family === 'TCP4' ? 4 : family === 'TCP6' ? 6 : 0;
  if (want === 0) return { state: 'invalid', message: `v1 header: unknown protocol family "${family}"` };
  if (isIP(src) !== want || isIP(dst) !== want) return { state: 'invalid', message: `v1 header: addresses are not ${family} literals` };
  const ports = [sport, dport].map((p) => (PORT.test(p) ? Number(p) : -1));
  if (ports.some((p) => p < 0 || p > 65535)) return { state: 'invalid', message: 'v1 header: ports must be decimal 0-65535' };
  return { state: 'done', header: { version: 1, command: 'PROXY', source: { address: src, port: ports[0] as number }, destination: { address: dst, port: ports[1] as number }, length } };
}

function ipv6(bytes: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  // Compress the longest run of zero groups, as inet_ntop does.
  let best = { start: -1, length: 0 };
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > best.length && j - i > 1) best = { start: i, length: j - i };
    i = j;
  }
  if (best.start < 0) return groups.join(':');
  return `${groups.slice(0, best.start).join(':')}::${groups.slice(best.start + best.length).join(':')}`;
}

function parseV2(data: Buffer): ParseResult {
  if (data.length < 16) return { state: 'incomplete' };
  const versionCommand = data[12] as number;
  const family = data[13] as number;
  const declared = data.readUInt16BE(14);
  const length = 16 + declared;
  if (versionCommand >> 4 !== 2) return { state: 'invalid', message: `v2 header with version ${versionCommand >> 4}` };
  const command = versionCommand & 0x0f;
  if (command !== 0 && command !== 1) return { state: 'invalid', message: `v2 header with command ${command}` };
  if (length > V2_MAX) return { state: 'invalid', message: `v2 header of ${length} bytes (at most ${V2_MAX})` };
  if (data.length < length) return { state: 'incomplete' };
  if (command === 0) return { state: 'done', header: { version: 2, command: 'LOCAL', source: null, destination: null, length } };
  const body = data.subarray(16, length);
  switch (family) {
    case 0x00: // AF_UNSPEC: addresses unknown
      return { state: 'done', header: { version: 2, command: 'PROXY', source: null, destination: null, length } };
    case 0x11: {
      if (body.length < 12) return { state: 'invalid', message: 'v2 TCP over IPv4 header shorter than its addresses' };
      const v4 = (at: number) => `${body[at]}.${body[at + 1]}.${body[at + 2]}.${body[at + 3]}`;
      return {
        state: 'done',
        header: { version: 2, command: 'PROXY', source: { address: v4(0), port: body.readUInt16BE(8) }, destination: { address: v4(4), port: body.readUInt16BE(10) }, length },
      };
    }
    case 0x21: {
      if (body.length < 36) return { state: 'invalid', message: 'v2 TCP over IPv6 header shorter than its addresses' };
      return {
        state: 'done',
        header: {
          version: 2,
          command: 'PROXY',
          source: { address: ipv6(body.subarray(0, 16)), port: body.readUInt16BE(32) },
          destination: { address: ipv6(body.subarray(16, 32)), port: body.readUInt16BE(34) },
          length,
        },
      };
    }
    default:
      return { state: 'invalid', message: `v2 header with address family/protocol 0x${family.toString(16).padStart(2, '0')} (only TCP over IPv4/IPv6, or unspecified)` };
  }
}

/** Parse the start of a connection as a PROXY header (v1 or v2). */
export function parseProxyHeader(data: Buffer): ParseResult {
  if (data.length === 0) return { state: 'incomplete' };
  if (startsAs(data, V2_SIGNATURE)) return data.length < V2_SIGNATURE.length ? { state: 'incomplete' } : parseV2(data);
  if (startsAs(data, V1_PREFIX)) return data.length < V1_PREFIX.length ? { state: 'incomplete' } : parseV1(data);
  return { state: 'absent' };
}

export type ProxyReadResult =
  | { ok: true; header: ProxyHeader | null; rest: Buffer }
  | { ok: false; code: ProxyProtocolCode; message: string };

/**
 * Take the PROXY header off `socket` (which nothing else reads yet): reads until the header is
 * complete, refused, or `timeoutMs` passes. The bytes after the header are returned (`rest`) for
 * the caller to `unshift` back; the socket is left paused with no listener of ours on it.
 */
export function readProxyHeader(socket: Socket, policy: ProxyProtocolPolicy, timeoutMs: number): Promise<ProxyReadResult> {
  return new Promise((resolve) => {
    let data: Buffer = Buffer.alloc(0);
    let settled = false;
    const finish = (result: ProxyReadResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onEnd);
      socket.pause();
      resolve(result);
    };
    const onData = (chunk: Buffer): void => {
      data = data.length === 0 ? chunk : Buffer.concat([data, chunk]);
      const parsed = parseProxyHeader(data);
      switch (parsed.state) {
        case 'incomplete':
          if (data.length > V2_MAX) finish({ ok: false, code: ProxyProtocolCode.INVALID, message: `no complete PROXY header in ${data.length} bytes` });
          return;
        case 'absent':
          if (policy.required) finish({ ok: false, code: ProxyProtocolCode.REQUIRED, message: 'the connection did not start with a PROXY protocol header' });
          else finish({ ok: true, header: null, rest: data });
          return;
        case 'invalid':
          finish({ ok: false, code: ProxyProtocolCode.INVALID, message: parsed.message });
          return;
        case 'done': {
          const { header } = parsed;
          if ((header.version === 1 && !policy.v1) || (header.version === 2 && !policy.v2)) {
            finish({ ok: false, code: ProxyProtocolCode.INVALID, message: `PROXY protocol v${header.version} is disallowed on this listener` });
            return;
          }
          finish({ ok: true, header, rest: data.subarray(header.length) });
        }
      }
    };
    const onEnd = (): void => finish({ ok: false, code: ProxyProtocolCode.INCOMPLETE, message: `the connection ended after ${data.length} bytes, before a complete PROXY header` });
    const timer = setTimeout(() => finish({ ok: false, code: ProxyProtocolCode.TIMEOUT, message: `no complete PROXY header within ${timeoutMs} ms` }), timeoutMs);
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
    socket.once('error', onEnd);
  });
}

/** `envoy.filters.listener.proxy_protocol`'s typed_config → policy (or problems). */
export function compileProxyProtocol(any: Any | undefined, at: string, problems: Problem[]): ProxyProtocolPolicy | null {
  if (any === undefined) return { required: true, v1: true, v2: true };
  if (any.typeUrl !== PROXY_PROTOCOL_TYPE_URL) {
    problems.push({ field: at, message: `${any.typeUrl} unsupported` });
    return null;
  }
  let config;
  try {
    config = fromBinary(ProxyProtocolSchema, any.value);
  } catch {
    problems.push({ field: at, message: 'cannot be decoded' });
    return null;
  }
  // TLV rules feed dynamic metadata nobody here reads; pass-through TLVs concern upstream PROXY headers.
  onlyFields(ProxyProtocolSchema, config, ['allow_requests_without_proxy_protocol', 'disallowed_versions', 'stat_prefix', 'pass_through_tlvs'], at, problems);
  const disallowed = new Set(config.disallowedVersions);
  const policy = { required: !config.allowRequestsWithoutProxyProtocol, v1: !disallowed.has(ProxyProtocolConfig_Version.V1), v2: !disallowed.has(ProxyProtocolConfig_Version.V2) };
  if (!policy.v1 && !policy.v2) problems.push({ field: join(at, 'disallowed_versions'), message: 'disallows every version' });
  return policy;
}
