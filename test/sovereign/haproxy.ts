/** The HAProxy launcher of cli/haproxy.ts, as the sovereign tests use it. */
export { HAPROXY_PACKAGE, findHaproxy, freePort, startHaproxy } from '../../cli/haproxy.js';
export type { Haproxy, HaproxyOptions } from '../../cli/haproxy.js';
