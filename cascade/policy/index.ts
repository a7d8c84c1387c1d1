/**
 * The policy engine: per frame, accept here or offload to the next tier (and with which
 * payload), weighing the expected accuracy gain from the model card's reliability table against
 * the byte cost and the probability of an answer within the remaining budget, from link and load
 * estimates learnt from earlier answers. Pure: no I/O except the policy-file helpers.
 *
 * ```ts
 * const engine = new PolicyEngine({ tier: 'device', card, now: () => performance.now() });
 * const d = engine.decide({ confidence, budgetLeftMs, payloadBytes: { tensor: 784 } });
 * // … send, then engine.observe({ at, bytes, rttMs, queueMs, serviceMs }) or engine.observeMiss(at, bytes)
 * ```
 */
export {
  DEFAULT_POLICY_CONFIG,
  type EstimatorConfig,
  loadPolicyFile,
  mergePolicyConfig,
  PAYLOAD_KINDS,
  type PayloadKind,
  type PolicyConfig,
  type PolicyConfigPatch,
  PolicyConfigSchema,
  type PolicyFileWatcher,
  PRIVATE_PAYLOADS,
  watchPolicyFile,
} from './config.ts';
export {
  type Candidate,
  type DecisionDetail,
  type DecisionInputs,
  deadlineProbability,
  decideFrame,
  type FrameFacts,
  type PolicyDecision,
} from './decide.ts';
export {
  type DecisionListener,
  PolicyEngine,
  type PolicyEngineOptions,
  type PolicyLogger,
  type PolicySnapshot,
  type TransferObservation,
} from './engine.ts';
export { type GainAt, type GainCurve, type GainPoint, gainAt, gainCurve, NEXT_TIER } from './gain.ts';
export { bandwidthOf, type LinkEstimate, LinkEstimator } from './link-estimator.ts';
export { type LoadEstimate, LoadEstimator } from './load-estimator.ts';
export { registerPolicyMetrics } from './metrics.ts';
export { normalCdf } from './normal.ts';
export { ENGINE_REASONS, isOffloadReason, type ReasonCode, Reasons } from './reasons.ts';
export { TailCalibrator } from './tail-calibrator.ts';
