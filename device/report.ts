/**
 * The end-of-run report of a device (`cascade device --json`, read by `cascade demo`), and the
 * size of a tensor offload envelope for the "offload every frame" comparison.
 */
import { encode } from '../cascade/protocol.ts';
import type { InputSpec } from '../models/card.ts';
import type { DeviceCounts } from './metrics.ts';
import { tensorInfo } from './payload.ts';

/** What a device run amounts to (`cascade device --json`, `cascade demo`). */
export interface DeviceReport {
  deviceId: string;
  /** Frames the source produced, including those it could not deliver. */
  frames: number;
  processed: number;
  dropped: { backpressure: number; source: number; error: number };
  /** Results by answering tier (misses count under device). */
  results: { device: number; gateway: number; cloud: number };
  misses: number;
  late: number;
  offloads: number;
  /** Results by policy reason code. */
  reasons: Record<string, number>;
  /** Offload envelope bytes published. */
  uplinkBytes: number;
  /** Envelope bytes had every frame been offloaded as a tensor. */
  allFramesBytes: number;
  resultBytes: number;
  /** Results still unpublished at the end (broker unreachable). */
  unpublished: number;
  preprocess: string;
  mode: 'pipelined' | 'sequential';
}

/** What {@link buildReport} reads. */
export interface ReportInputs {
  deviceId: string;
  counts: DeviceCounts;
  /** Frames the source could not deliver. */
  lost: number;
  late: number;
  tensorEnvelopeBytes: number;
  unpublished: number;
  preprocess: string;
  mode: 'pipelined' | 'sequential';
}

/** Sums the counts into a report. */
export function buildReport(i: ReportInputs): DeviceReport {
  const c = i.counts;
  const results = { device: 0, gateway: 0, cloud: 0 };
  const reasons: Record<string, number> = {};
  for (const [key, n] of c.results) {
    const [tier, reason] = key.split('|');
    results[tier as keyof typeof results] += n;
    reasons[reason] = (reasons[reason] ?? 0) + n;
  }
  let misses = 0;
  for (const n of c.misses.values()) misses += n;
  let offloads = 0;
  for (const n of c.offloads.values()) offloads += n;
  const frames = c.captured + i.lost;
  return {
    deviceId: i.deviceId,
    frames,
    processed: c.processed,
    dropped: { ...c.dropped, source: i.lost },
    results,
    misses,
    late: i.late,
    offloads,
    reasons,
    uplinkBytes: c.bytes.offload,
    allFramesBytes: frames * i.tensorEnvelopeBytes,
    resultBytes: c.bytes.result,
    unpublished: i.unpublished,
    preprocess: i.preprocess,
    mode: i.mode,
  };
}

/** Envelope bytes of one tensor offload (the "offload every frame" comparison). */
export function tensorEnvelopeBytes(deviceId: string, version: string, spec: InputSpec): number {
  const tensor = tensorInfo(spec);
  return encode({
    kind: 'offload',
    deviceId,
    frameId: 0,
    captureTime: 0,
    budgetLeftMs: 0,
    modelVersion: version,
    topk: [
      { label: 0, prob: 0.5 },
      { label: 1, prob: 0.3 },
      { label: 2, prob: 0.2 },
    ],
    trace: { traceId: '1'.repeat(32), spanId: '1'.repeat(16), flags: 1 },
    contentType: 'tensorU8',
    tensor,
    privacy: false,
    payload: new Uint8Array(tensor.channels * tensor.height * tensor.width),
  }).length;
}
