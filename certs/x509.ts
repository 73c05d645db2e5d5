/**
 * The one way tether code reaches `@peculiar/x509`: installs the Reflect metadata functions the
 * library needs, then selects Node's WebCrypto as its provider.
 */
import './reflect-metadata-shim.js';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(globalThis.crypto);

export { x509 };
