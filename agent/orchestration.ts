/**
 * The agent's orchestration side: the outbound channel to the control plane (leases, phase
 * events, aborts), the executor that runs leased tasks, and the dataproxy that signs URLs for the
 * data the tasks and clients move. All three stay in the data plane; only metadata (phases,
 * short error messages, output URIs) goes to the control plane (I2).
 */
import type { CertificateSource } from '../certs/index.js';
import type { Closable } from '../common/lifecycle.js';
import { once } from '../common/lifecycle.js';
import type { Logger } from '../common/log.js';
import * as pb from '../control/gen/tether/control/v1/control_pb.js';
import { AgentClient } from './control-client.js';
import { startEmbeddedDataproxy, type EmbeddedDataproxy, type EmbeddedDataproxyOptions } from './dataproxy/index.js';
import { Executor } from './executor/index.js';
import type { ModeAuthority } from './sovereignty.js';

export interface OrchestrationOptions {
  /** `host:port` of the control plane's agents' listener (mutual TLS). */
  controlAddress: string;
  agentId: string;
  /** The agent's workload certificate (in-memory key) and the roots it trusts. */
  certificates: CertificateSource;
  trustBundlePem: string;
  /** Where runs get their working folders. */
  workDir: string;
  dataproxy: EmbeddedDataproxyOptions;
  /**
   * Who answers the mode the control plane claims in each Welcome: the tunnel side (`Agent`), whose
   * customer-approved local mode wins. A claim it does not agree with is reported back on the
   * channel for the control plane's audit log. Absent: claims are ignored.
   */
  mode?: ModeAuthority;
  logger?: Logger;
}

export class Orchestration implements Closable {
  readonly client: AgentClient;
  readonly executor: Executor;
  readonly data: EmbeddedDataproxy;
  private readonly unsubscribe: () => void;

  private constructor(options: OrchestrationOptions, data: EmbeddedDataproxy) {
    this.data = data;
    const { certificates, trustBundlePem } = options;
    let client: AgentClient | null = null;
    this.executor = new Executor({ workDir: options.workDir, urls: data.dataproxy, onEvent: (event) => client?.report(event) });
    client = new AgentClient({
      address: options.controlAddress,
      agentId: options.agentId,
      credentials: () => {
        const material = certificates.current();
        return { key: material.keyPem, cert: material.chainPem, ca: trustBundlePem };
      },
      running: () => this.executor.running(),
      onAssignment: (assignment) => {
        this.executor.start(assignment);
      },
      onAbort: (runId, reason) => this.executor.abort(runId, reason),
      onWelcome: (welcome) => {
        const claimed = welcome.mode === pb.ClusterMode.SOVEREIGN ? 'sovereign' : welcome.mode === pb.ClusterMode.TUNNEL ? 'tunnel' : null;
        if (claimed === null || options.mode === undefined) return;
        const verdict = options.mode.answerControlPlaneMode(claimed);
        if (!verdict.agreed) client?.reportMode(verdict);
      },
      ...(options.logger === undefined ? {} : { logger: options.logger }),
    });
    this.client = client;
    // A renewed certificate: open a new stream with it, then retire the old one (make-before-break).
    let serial = certificates.current().serialNumber;
    this.unsubscribe = certificates.subscribe((material) => {
      if (material.serialNumber === serial) return; // the subscription's replay of the current one
      serial = material.serialNumber;
      void this.client.renew().catch((reason: unknown) => options.logger?.warn({ err: reason }, 'control channel renewal failed'));
    });
  }

  static async start(options: OrchestrationOptions): Promise<Orchestration> {
    const data = await startEmbeddedDataproxy(options.dataproxy);
    const orchestration = new Orchestration(options, data);
    orchestration.client.start();
    return orchestration;
  }

  /** Finish running tasks' event delivery, then stop. */
  readonly drain = once(async (graceMs = 5_000): Promise<void> => {
    this.unsubscribe();
    await this.client.drain(graceMs);
    await this.executor.close();
    await this.data.drain();
  });

  readonly close = once(async (): Promise<void> => {
    this.unsubscribe();
    await this.executor.close();
    await this.client.close();
    await this.data.close();
  });
}
