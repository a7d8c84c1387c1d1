/**
 * The offload policies the simulator compares, behind one interface: where each frame goes from
 * the device (stay, gateway or straight to the cloud, and with which payload), and whether the
 * gateway answers or forwards to the cloud. Only the engine listens to what comes back.
 */
import {
  DEFAULT_POLICY_CONFIG,
  type PayloadKind,
  type PolicyConfigPatch,
  PolicyEngine,
} from '../../cascade/policy/index.ts';
import type { ModelCard } from '../../models/card.ts';

export const POLICY_NAMES = ['device-only', 'cloud-only', 'fixed', 'calibrated', 'engine'] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

/** Thresholds of the article this project started from: device 0.6, gateway 0.85. */
export const FIXED_THRESHOLDS = Object.freeze({ device: 0.6, gateway: 0.85 });

/** Called with every engine a run creates (debugging, tests). */
export type EngineInspector = (tier: 'device' | 'gateway', index: number, engine: PolicyEngine) => void;

/** The device side's choice for one frame. */
export interface DeviceChoice {
  target: 'local' | 'gateway' | 'cloud';
  payload: PayloadKind | null;
  reason: string;
  /** The engine's P(answer in time) for an offload; NaN for the threshold policies. */
  pDeadline: number;
}

/** What the device knows when it decides. */
export interface DeviceFrame {
  camera: number;
  confidence: number;
  budgetLeftMs: number;
  /** Wire bytes of each payload the frame can be sent as. */
  payloadBytes: Partial<Record<PayloadKind, number>>;
}

/** One policy as the simulator drives it; `now` is simulation time in ms. */
export interface SimPolicy {
  readonly name: PolicyName;
  device(f: DeviceFrame, now: number): DeviceChoice;
  /** The gateway's choice for a frame it has classified: true = forward to the cloud. */
  gatewayForward(
    confidence: number,
    budgetLeftMs: number,
    payload: PayloadKind,
    bytes: number,
    now: number,
  ): boolean;
  /** An answer reached camera `camera` (also late ones). */
  deviceObserve(
    camera: number,
    at: number,
    bytes: number,
    rttMs: number,
    queueMs: number,
    serviceMs: number,
    forwardMs: number,
  ): void;
  deviceMiss(camera: number, at: number, bytes: number, waitedMs: number): void;
  /** The cloud answered a gateway forward. */
  gatewayObserve(at: number, bytes: number, rttMs: number, serviceMs: number): void;
  /** Decisions by reason code at the device and at the gateway. */
  reasons(): { device: Record<string, number>; gateway: Record<string, number> };
}

function counter() {
  const counts: Record<string, number> = {};
  return {
    counts,
    add(reason: string) {
      counts[reason] = (counts[reason] ?? 0) + 1;
    },
  };
}

/** Threshold policies (device-only, cloud-only, fixed, calibrated): blind to the network. */
function thresholdPolicy(name: PolicyName, device: number, gateway: number, payload: PayloadKind): SimPolicy {
  const dev = counter();
  const gw = counter();
  return {
    name,
    device(f) {
      if (name === 'device-only') {
        dev.add('local:always');
        return { target: 'local', payload: null, reason: 'local:always', pDeadline: Number.NaN };
      }
      if (name === 'cloud-only') {
        dev.add('offload:always');
        return { target: 'cloud', payload, reason: 'offload:always', pDeadline: Number.NaN };
      }
      const off = f.confidence < device;
      const reason = off ? 'offload:threshold' : 'local:threshold';
      dev.add(reason);
      const pDeadline = Number.NaN;
      return off
        ? { target: 'gateway', payload, reason, pDeadline }
        : { target: 'local', payload: null, reason, pDeadline };
    },
    gatewayForward(confidence) {
      const fwd = confidence < gateway;
      gw.add(fwd ? 'offload:threshold' : 'local:threshold');
      return fwd;
    },
    deviceObserve() {},
    deviceMiss() {},
    gatewayObserve() {},
    reasons: () => ({ device: { ...dev.counts }, gateway: { ...gw.counts } }),
  };
}

function sumCounts(list: Record<string, number>[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const c of list) for (const [k, v] of Object.entries(c)) out[k] = (out[k] ?? 0) + v;
  for (const k of Object.keys(out)) if (out[k] === 0) delete out[k];
  return out;
}

/** The policy engine: one PolicyEngine per camera, one at the gateway, on the simulation clock. */
function enginePolicy(
  cards: { device: ModelCard; gateway: ModelCard },
  cameras: number,
  clock: { now: number },
  config: { device?: PolicyConfigPatch; gateway?: PolicyConfigPatch },
  inspect?: EngineInspector,
): SimPolicy {
  const now = () => clock.now;
  const devices = Array.from(
    { length: cameras },
    () => new PolicyEngine({ tier: 'device', card: cards.device, config: config.device, now }),
  );
  const gateway = new PolicyEngine({ tier: 'gateway', card: cards.gateway, config: config.gateway, now });
  devices.forEach((d, i) => {
    inspect?.('device', i, d);
  });
  inspect?.('gateway', 0, gateway);
  return {
    name: 'engine',
    device(f) {
      const d = devices[f.camera].decide({
        confidence: f.confidence,
        budgetLeftMs: f.budgetLeftMs,
        payloadBytes: f.payloadBytes,
      });
      return d.offload
        ? { target: 'gateway', payload: d.payload, reason: d.reason, pDeadline: d.pDeadline }
        : { target: 'local', payload: null, reason: d.reason, pDeadline: d.pDeadline };
    },
    gatewayForward(confidence, budgetLeftMs, payload, bytes) {
      return gateway.decide({ confidence, budgetLeftMs, payloadBytes: { [payload]: bytes } }).offload;
    },
    deviceObserve(camera, at, bytes, rttMs, queueMs, serviceMs, forwardMs) {
      devices[camera].observe({ at, bytes, rttMs, queueMs, serviceMs, forwardMs });
    },
    deviceMiss(camera, at, bytes, waitedMs) {
      devices[camera].observeMiss(at, bytes, waitedMs);
    },
    gatewayObserve(at, bytes, rttMs, serviceMs) {
      gateway.observe({ at, bytes, rttMs, queueMs: 0, serviceMs });
    },
    reasons: () => ({
      device: sumCounts(devices.map((d) => d.reasonCounts())),
      gateway: sumCounts([gateway.reasonCounts()]),
    }),
  };
}

/**
 * Builds a policy by name.
 * @param clock the simulator's clock object (the engine reads `clock.now`).
 * @param config engine config patches for the device and the gateway tiers.
 */
export function makePolicy(
  name: PolicyName,
  cards: { device: ModelCard; gateway: ModelCard },
  cameras: number,
  clock: { now: number },
  config: { device?: PolicyConfigPatch; gateway?: PolicyConfigPatch } = {},
  inspect?: EngineInspector,
): SimPolicy {
  // Threshold policies send what the engine prefers by default, so bytes compare fairly.
  const payload = (config.device?.payloads ?? DEFAULT_POLICY_CONFIG.payloads)[0];
  switch (name) {
    case 'device-only':
      return thresholdPolicy(name, 0, 1, payload);
    case 'cloud-only':
      return thresholdPolicy(name, 2, 1, payload);
    case 'fixed':
      return thresholdPolicy(name, FIXED_THRESHOLDS.device, FIXED_THRESHOLDS.gateway, payload);
    case 'calibrated':
      return thresholdPolicy(name, cards.device.thresholds.accept, cards.gateway.thresholds.accept, payload);
    case 'engine':
      return enginePolicy(cards, cameras, clock, config, inspect);
  }
}
