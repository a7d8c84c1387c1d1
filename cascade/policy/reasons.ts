/**
 * Reason codes: one compact word per decision saying why, `<action>:<cause>`, counted in metrics
 * (label `reason`) and shown by `cascade demo`. The set is closed for the engine; other callers
 * may add their own codes with the same shape.
 */

export const Reasons = {
  /** This tier's answer is as good as the next tier's would be (high confidence). */
  LOCAL_CONFIDENT: 'local:confident',
  /** Offloading would not gain enough accuracy for its byte cost (below the card's threshold). */
  LOCAL_NOGAIN: 'local:nogain',
  /** No payload could reach the next tier and come back within the remaining budget. */
  LOCAL_DEADLINE: 'local:deadline',
  /** The uplink byte budget (token bucket) has no room for the payload. */
  LOCAL_BUDGET: 'local:budget',
  /** The link is unknown and the card's calibrated threshold says accept. */
  LOCAL_UNKNOWN: 'local:unknown',
  /** Privacy mode and no payload free of raw pixels is available. */
  LOCAL_PRIVACY: 'local:privacy',
  /** The caller offered no payload at all. */
  LOCAL_NOPAYLOAD: 'local:nopayload',
  /** Expected accuracy gain outweighs the byte cost and the deadline is likely met. */
  OFFLOAD_GAIN: 'offload:gain',
  /** Link or reliability unknown: the card's calibrated threshold says offload. */
  OFFLOAD_THRESHOLD: 'offload:threshold',
  /** The link looked too slow but has been silent: one frame probes it. */
  OFFLOAD_PROBE: 'offload:probe',
} as const;

/** Every code the engine itself returns, in a stable order (metrics pre-create these). */
export const ENGINE_REASONS: readonly string[] = Object.freeze(Object.values(Reasons));

/** A reason code: one of {@link Reasons} or a caller's own `<action>:<cause>`. */
export type ReasonCode = (typeof Reasons)[keyof typeof Reasons] | (string & {});

/** True for codes that mean the frame was offloaded. */
export function isOffloadReason(reason: string): boolean {
  return reason.startsWith('offload:');
}
