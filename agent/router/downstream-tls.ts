/**
 * Downstream TLS for the sovereign front: a filter chain's `DownstreamTlsContext` (the customer's
 * server certificate inline or by SDS secret name, TLS 1.2 or later, ALPN) and SDS `Secret`s
 * compiled to what `tls.createSecureContext` takes. Certificates and keys are loaded at compile
 * time, so a bad PEM or a key that does not match is a NACK, not a failed handshake later.
 */
import { createSecureContext } from 'node:tls';
import type { SecureVersion } from 'node:tls';
import { fromBinary } from '@bufbuild/protobuf';
import type { Any } from '@bufbuild/protobuf/wkt';
import type { DataSource } from '../../xds/gen/envoy/config/core/v3/base_pb.js';
import { TlsCertificateSchema, TlsParameters_TlsProtocol, TlsParametersSchema } from '../../xds/gen/envoy/extensions/transport_sockets/tls/v3/common_pb.js';
import type { TlsCertificate } from '../../xds/gen/envoy/extensions/transport_sockets/tls/v3/common_pb.js';
import { SecretSchema } from '../../xds/gen/envoy/extensions/transport_sockets/tls/v3/secret_pb.js';
import type { Secret } from '../../xds/gen/envoy/extensions/transport_sockets/tls/v3/secret_pb.js';
import { CommonTlsContextSchema, DownstreamTlsContextSchema } from '../../xds/gen/envoy/extensions/transport_sockets/tls/v3/tls_pb.js';
import { DOWNSTREAM_TLS_TYPE_URL } from '../../xds/references.js';
import { getErrorMessage } from '../../common/errors.js';
import { join, onlyFields } from './fields.js';
import type { Problem } from './fields.js';

export interface CertificatePair {
  /** Certificate chain PEM (leaf first). */
  cert: string;
  /** Private key PEM. */
  key: string;
}

export interface DownstreamTls {
  /** The certificate inline, or the name of the SDS secret holding it. */
  certificate: CertificatePair | { sds: string };
  minVersion: SecureVersion;
  maxVersion: SecureVersion;
  /** ALPN the front offers: `['http/1.1']`, or none when the context lists no protocols. */
  alpn: string[];
}

export interface CompiledSecret {
  name: string;
  certificate: CertificatePair;
}

const VERSIONS: Partial<Record<TlsParameters_TlsProtocol, SecureVersion>> = {
  [TlsParameters_TlsProtocol.TLSv1_2]: 'TLSv1.2',
  [TlsParameters_TlsProtocol.TLSv1_3]: 'TLSv1.3',
};

function text(source: DataSource | undefined, at: string, problems: Problem[]): string | null {
  const specifier = source?.specifier;
  if (specifier?.case === 'inlineString') return specifier.value;
  if (specifier?.case === 'inlineBytes') return Buffer.from(specifier.value).toString('utf8');
  problems.push({ field: at, message: specifier === undefined ? 'is required' : `${specifier.case === 'filename' ? 'filename' : 'environment_variable'} unsupported (inline_string or inline_bytes, or SDS)` });
  return null;
}

/** A TlsCertificate with an inline chain and key that load together. */
function pairOf(certificate: TlsCertificate, at: string, problems: Problem[]): CertificatePair | null {
  onlyFields(TlsCertificateSchema, certificate, ['certificate_chain', 'private_key'], at, problems);
  const cert = text(certificate.certificateChain, join(at, 'certificate_chain'), problems);
  const key = text(certificate.privateKey, join(at, 'private_key'), problems);
  if (cert === null || key === null) return null;
  try {
    createSecureContext({ cert, key });
  } catch (reason) {
    problems.push({ field: at, message: `certificate and key do not load: ${getErrorMessage(reason)}` });
    return null;
  }
  return { cert, key };
}

export function compileDownstreamTls(any: Any | undefined, at: string, problems: Problem[]): DownstreamTls | null {
  if (any?.typeUrl !== DOWNSTREAM_TLS_TYPE_URL) {
    problems.push({ field: at, message: `${any?.typeUrl ?? 'a transport socket without typed_config'} unsupported (only DownstreamTlsContext)` });
    return null;
  }
  let context;
  try {
    context = fromBinary(DownstreamTlsContextSchema, any.value);
  } catch {
    problems.push({ field: at, message: 'cannot be decoded' });
    return null;
  }
  // Session resumption settings only tune handshakes; anything that changes who may connect is refused.
  onlyFields(DownstreamTlsContextSchema, context, ['common_tls_context', 'require_client_certificate', 'session_timeout', 'disable_stateless_session_resumption', 'disable_stateful_session_resumption', 'full_scan_certs_on_sni_mismatch'], at, problems);
  if (context.requireClientCertificate === true) problems.push({ field: join(at, 'require_client_certificate'), message: 'unsupported (client certificates are not implemented)' });
  const common = context.commonTlsContext;
  const cat = join(at, 'common_tls_context');
  if (common === undefined) {
    problems.push({ field: cat, message: 'is required (the server certificate)' });
    return null;
  }
  onlyFields(CommonTlsContextSchema, common, ['tls_params', 'tls_certificates', 'tls_certificate_sds_secret_configs', 'alpn_protocols'], cat, problems);
  let minVersion: SecureVersion = 'TLSv1.2';
  let maxVersion: SecureVersion = 'TLSv1.3';
  const params = common.tlsParams;
  if (params !== undefined) {
    const pat = join(cat, 'tls_params');
    onlyFields(TlsParametersSchema, params, ['tls_minimum_protocol_version', 'tls_maximum_protocol_version'], pat, problems);
    if (params.tlsMinimumProtocolVersion !== TlsParameters_TlsProtocol.TLS_AUTO) {
      const min = VERSIONS[params.tlsMinimumProtocolVersion];
      if (min === undefined) problems.push({ field: join(pat, 'tls_minimum_protocol_version'), message: `${TlsParameters_TlsProtocol[params.tlsMinimumProtocolVersion] ?? params.tlsMinimumProtocolVersion} refused (TLSv1_2 or later)` });
      else minVersion = min;
    }
    if (params.tlsMaximumProtocolVersion !== TlsParameters_TlsProtocol.TLS_AUTO) {
      const max = VERSIONS[params.tlsMaximumProtocolVersion];
      if (max === undefined) problems.push({ field: join(pat, 'tls_maximum_protocol_version'), message: `${TlsParameters_TlsProtocol[params.tlsMaximumProtocolVersion] ?? params.tlsMaximumProtocolVersion} refused (TLSv1_2 or later)` });
      else maxVersion = max;
    }
    if (minVersion === 'TLSv1.3' && maxVersion === 'TLSv1.2') problems.push({ field: pat, message: 'the minimum version is above the maximum' });
  }
  let alpn: string[] = [];
  if (common.alpnProtocols.length > 0) {
    if (!common.alpnProtocols.includes('http/1.1')) problems.push({ field: join(cat, 'alpn_protocols'), message: 'must include http/1.1 (the built-in router serves HTTP/1.1; h2 is not implemented)' });
    for (const protocol of common.alpnProtocols) if (protocol !== 'http/1.1' && protocol !== 'h2') problems.push({ field: join(cat, 'alpn_protocols'), message: `"${protocol}" unsupported` });
    alpn = ['http/1.1'];
  }
  const count = common.tlsCertificates.length + common.tlsCertificateSdsSecretConfigs.length;
  if (count !== 1) {
    problems.push({ field: cat, message: count === 0 ? 'needs a certificate (tls_certificates or tls_certificate_sds_secret_configs)' : 'exactly one certificate is supported' });
    return null;
  }
  let certificate: DownstreamTls['certificate'] | null = null;
  const inline = common.tlsCertificates[0];
  const sds = common.tlsCertificateSdsSecretConfigs[0];
  if (inline !== undefined) certificate = pairOf(inline, join(cat, 'tls_certificates[0]'), problems);
  else if (sds !== undefined) {
    const which = sds.sdsConfig?.configSourceSpecifier.case;
    const sat = join(cat, 'tls_certificate_sds_secret_configs[0]');
    if (which !== 'ads' && which !== 'self') problems.push({ field: join(sat, 'sds_config'), message: 'only ads or self is supported' });
    if (sds.name === '') problems.push({ field: join(sat, 'name'), message: 'is empty' });
    certificate = { sds: sds.name };
  }
  if (certificate === null) return null;
  return { certificate, minVersion, maxVersion, alpn };
}

/** An SDS secret holding a server certificate. */
export function compileSecret(secret: Secret): { ok: true; value: CompiledSecret } | { ok: false; problems: Problem[] } {
  const problems: Problem[] = [];
  onlyFields(SecretSchema, secret, ['name', 'tls_certificate'], '', problems);
  const type = secret.type;
  let certificate: CertificatePair | null = null;
  if (type.case === 'tlsCertificate') certificate = pairOf(type.value, 'tls_certificate', problems);
  else if (type.case === undefined) problems.push({ field: 'tls_certificate', message: 'is required' });
  if (problems.length > 0 || certificate === null) return { ok: false, problems };
  return { ok: true, value: { name: secret.name, certificate } };
}
