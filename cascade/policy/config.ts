/**
 * Policy configuration: the knobs of the offload decision (deadline target, byte cost, uplink
 * byte budget, payload options) and of the link estimator, validated by one TypeBox schema that
 * lists every error at once. A policy file (JSON) holds a partial config; {@link watchPolicyFile}
 * reloads it at run time so thresholds and costs change without a restart.
 */
import { type FSWatcher, watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { type Static, Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { CascadeError, ErrorCodes } from '../errors.ts';

/** What an offload carries: the card's int8 input tensor, a JPEG crop at a quality, or features. */
export const PAYLOAD_KINDS = ['tensor', 'jpeg-q50', 'jpeg-q75', 'jpeg-q90', 'features'] as const;
export type PayloadKind = (typeof PAYLOAD_KINDS)[number];

/** Payloads that carry no raw pixels: the only ones allowed in privacy mode. */
export const PRIVATE_PAYLOADS: readonly PayloadKind[] = ['tensor', 'features'];

const Payload = Type.Union(PAYLOAD_KINDS.map((k) => Type.Literal(k)));

const EstimatorConfig = Type.Object(
  {
    /** EWMA weight of a new sample in the mean (TCP's 1/8). */
    alpha: Type.Number({ exclusiveMinimum: 0, maximum: 1 }),
    /** EWMA weight of a new sample in the mean absolute deviation (TCP's 1/4). */
    beta: Type.Number({ exclusiveMinimum: 0, maximum: 1 }),
    /** A sample further than this many deviations from the mean is clipped (outlier). */
    outlierK: Type.Number({ minimum: 1 }),
    /** Consecutive same-side outliers within {@link changeWindowMs} that mean a step change. */
    changeCount: Type.Integer({ minimum: 1 }),
    /** Window in which {@link changeCount} outliers must fall to count as a step change. */
    changeWindowMs: Type.Number({ exclusiveMinimum: 0 }),
    /** A sample after a gap this long weighs at least 1/2: knowledge ages with time too. */
    halfLifeMs: Type.Number({ minimum: 0 }),
    /** After a step up, how long a sample back at the old level restores it at once. */
    restoreWindowMs: Type.Number({ minimum: 0 }),
    /** Window of the minimum-RTT filter (the propagation delay). */
    minRttWindowMs: Type.Number({ exclusiveMinimum: 0 }),
    /** Without any observation for this long the link counts as unknown again. */
    staleMs: Type.Number({ exclusiveMinimum: 0 }),
    /** Relative growth of the deviation per second without observations (idle gaps). */
    idleGrowthPerSec: Type.Number({ minimum: 0 }),
    /** Age at which a transfer's residual weighs half in the tail calibration, ms. */
    tailHalfLifeMs: Type.Number({ exclusiveMinimum: 0 }),
    /** Weight of the normal prior in the tail calibration, in transfers. */
    tailPrior: Type.Number({ exclusiveMinimum: 0 }),
    /** Residuals the tail calibration keeps at most. */
    tailCapacity: Type.Integer({ minimum: 1 }),
    /** Cap of the bandwidth estimate, bit/s (an idle link shows no transfer delay at all). */
    maxBandwidthBps: Type.Number({ exclusiveMinimum: 0 }),
    /** Floor of every deviation, ms: measurement resolution. */
    minDeviationMs: Type.Number({ minimum: 0 }),
    /** Floor of every deviation as a share of its mean: jitter grows with the delay. */
    minDeviationRatio: Type.Number({ minimum: 0, maximum: 1 }),
  },
  { additionalProperties: false },
);

export const PolicyConfigSchema = Type.Object(
  {
    /** Offload only when P(answer within the remaining budget) is at least this. */
    deadlineTarget: Type.Number({ minimum: 0.5, maximum: 0.9999 }),
    /**
     * Share of all frames (local ones included) that should meet their deadline: each frame
     * earns (1 − goal) of a miss allowance, each miss spends one; while less than one miss is
     * left, only offloads sure to be in time go (and no probes). 0 turns the allowance off.
     */
    deadlineHitGoal: Type.Number({ minimum: 0, maximum: 1 }),
    /** Most misses the allowance can save up. */
    missBurst: Type.Number({ minimum: 1 }),
    /**
     * Cost of a missed deadline in the gain's unit: a risky offload must be worth more. The
     * price the deadline-hit goal puts on a miss; 0 leaves it to `deadlineTarget` alone.
     */
    missCost: Type.Number({ minimum: 0 }),
    /** Smallest expected accuracy gain (probability of a correct answer) worth an offload. */
    minGain: Type.Number({ minimum: 0, maximum: 1 }),
    /** Cost of one MB of uplink, in the same unit as the gain (probability of a correct answer). */
    costPerMB: Type.Number({ minimum: 0 }),
    /** Uplink byte budget per minute as a token bucket; 0 means unlimited. */
    uplinkBytesPerMinute: Type.Number({ minimum: 0 }),
    /** Size of the token bucket in seconds of {@link uplinkBytesPerMinute}. */
    bucketBurstSeconds: Type.Number({ exclusiveMinimum: 0 }),
    /** Payloads the engine may choose, in order of preference on ties. */
    payloads: Type.Array(Payload, { minItems: 1, uniqueItems: true }),
    /** Expected accuracy lost by the next tier per payload (e.g. JPEG artefacts); missing = 0. */
    payloadAccuracyLoss: Type.Record(Type.String(), Type.Number({ minimum: 0, maximum: 1 })),
    /** No raw pixels leave this tier: only tensor and feature payloads. */
    privacy: Type.Boolean(),
    /** While offloads are refused for the deadline and nothing is heard, one probe per interval. */
    probeIntervalMs: Type.Number({ minimum: 0 }),
    /** Overrides the model card's calibrated accept threshold (the fallback rule); null = card. */
    acceptThreshold: Type.Union([Type.Number({ minimum: 0, maximum: 1 }), Type.Null()]),
    /** Reliability bins with fewer samples than this are pooled with their neighbours. */
    minBinSamples: Type.Integer({ minimum: 0 }),
    /** Estimator settings. */
    estimator: EstimatorConfig,
  },
  { additionalProperties: false },
);
export type PolicyConfig = Static<typeof PolicyConfigSchema>;
export type EstimatorConfig = Static<typeof EstimatorConfig>;

/** Defaults of every setting; documented values are the ones measured with `cascade bench policy`. */
export const DEFAULT_POLICY_CONFIG: Readonly<PolicyConfig> = Object.freeze({
  deadlineTarget: 0.6,
  deadlineHitGoal: 0.993,
  missBurst: 3,
  missCost: 0.1,
  minGain: 0.01,
  costPerMB: 1,
  uplinkBytesPerMinute: 0,
  bucketBurstSeconds: 10,
  payloads: ['tensor', 'jpeg-q90', 'jpeg-q75', 'jpeg-q50', 'features'],
  // JPEG artefacts cost the next tier accuracy on exactly the frames worth offloading; measured
  // with `cascade bench policy` on 28×28 Fashion-MNIST frames the device is unsure of (gateway
  // student: −1.3 / −3.2 / −5.4 points at q90 / q75 / q50). Larger frames lose less: re-measure.
  payloadAccuracyLoss: { 'jpeg-q90': 0.015, 'jpeg-q75': 0.035, 'jpeg-q50': 0.06 },
  privacy: false,
  probeIntervalMs: 1000,
  acceptThreshold: null,
  minBinSamples: 20,
  estimator: {
    alpha: 0.125,
    beta: 0.25,
    outlierK: 4,
    changeCount: 2,
    changeWindowMs: 1000,
    restoreWindowMs: 30_000,
    halfLifeMs: 1000,
    minRttWindowMs: 10_000,
    staleMs: 10_000,
    idleGrowthPerSec: 0.5,
    tailHalfLifeMs: 30_000,
    tailPrior: 10,
    tailCapacity: 256,
    maxBandwidthBps: 1e9,
    minDeviationMs: 0.25,
    minDeviationRatio: 0.03,
  },
} satisfies PolicyConfig);

/** A partial config: what a policy file or `setConfig` holds. Nested estimator keys merge too. */
export type PolicyConfigPatch = Partial<Omit<PolicyConfig, 'estimator'>> & {
  estimator?: Partial<EstimatorConfig>;
};

const checkFull = TypeCompiler.Compile(PolicyConfigSchema);
const checkPatch = TypeCompiler.Compile(
  Type.Partial(
    Type.Object({
      ...PolicyConfigSchema.properties,
      estimator: Type.Partial(EstimatorConfig, { additionalProperties: false }),
    }),
    { additionalProperties: false },
  ),
);

function errorsOf(errors: Iterable<{ path: string; message: string }>): string {
  return [...errors].map((e) => `${e.path || '/'} ${e.message}`).join('; ');
}

/**
 * Merges patches over a base config and validates the result, listing every violation.
 * @returns a frozen config.
 * @throws {CascadeError} POLICY_ERR_CONFIG naming `where` and every error.
 */
export function mergePolicyConfig(
  base: Readonly<PolicyConfig>,
  patch: PolicyConfigPatch | undefined,
  where = 'policy config',
): Readonly<PolicyConfig> {
  if (patch !== undefined && !checkPatch.Check(patch)) {
    throw new CascadeError(ErrorCodes.POLICY_ERR_CONFIG, `${where}: ${errorsOf(checkPatch.Errors(patch))}`);
  }
  const merged = {
    ...base,
    ...patch,
    estimator: { ...base.estimator, ...patch?.estimator },
    payloadAccuracyLoss: { ...(patch?.payloadAccuracyLoss ?? base.payloadAccuracyLoss) },
    payloads: [...(patch?.payloads ?? base.payloads)],
  };
  if (!checkFull.Check(merged)) {
    throw new CascadeError(ErrorCodes.POLICY_ERR_CONFIG, `${where}: ${errorsOf(checkFull.Errors(merged))}`);
  }
  Object.freeze(merged.estimator);
  Object.freeze(merged.payloads);
  Object.freeze(merged.payloadAccuracyLoss);
  return Object.freeze(merged);
}

/**
 * Reads a policy file: a JSON object with any subset of {@link PolicyConfig}'s keys.
 * @throws {CascadeError} POLICY_ERR_CONFIG if the file cannot be read, is not JSON or breaks the
 *   schema (every error listed).
 */
export async function loadPolicyFile(path: string): Promise<PolicyConfigPatch> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new CascadeError(ErrorCodes.POLICY_ERR_CONFIG, `${path}: cannot read policy file`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new CascadeError(ErrorCodes.POLICY_ERR_CONFIG, `${path}: policy file is not valid JSON`, {
      cause: err,
    });
  }
  if (!checkPatch.Check(json)) {
    throw new CascadeError(ErrorCodes.POLICY_ERR_CONFIG, `${path}: ${errorsOf(checkPatch.Errors(json))}`);
  }
  // Validate the merged result too, so a file is refused as a whole at load time.
  mergePolicyConfig(DEFAULT_POLICY_CONFIG, json, path);
  return json;
}

/** Handle returned by {@link watchPolicyFile}. */
export interface PolicyFileWatcher {
  /** Stops watching. Safe to call more than once. */
  close(): void;
}

/**
 * Watches a policy file and calls `onChange` with each valid new content (debounced), so a
 * running device or gateway picks up new thresholds and costs without a restart. An invalid
 * file is reported to `onError` and the previous config stays in force.
 * @param opts.debounceMs quiet time after the last change before reloading; default 100.
 */
export function watchPolicyFile(
  path: string,
  onChange: (patch: PolicyConfigPatch) => void,
  onError: (err: CascadeError) => void,
  opts: { debounceMs?: number } = {},
): PolicyFileWatcher {
  const debounceMs = opts.debounceMs ?? 100;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  const reload = () => {
    timer = undefined;
    loadPolicyFile(path).then(
      (patch) => {
        if (!closed) onChange(patch);
      },
      (err: unknown) => {
        if (closed) return;
        onError(
          err instanceof CascadeError
            ? err
            : new CascadeError(ErrorCodes.POLICY_ERR_CONFIG, `${path}: ${String(err)}`, { cause: err }),
        );
      },
    );
  };
  let watcher: FSWatcher;
  try {
    // Editors and config managers replace a file by rename, which ends a watch on the file
    // itself: watch its folder and filter by name instead.
    const name = basename(path);
    watcher = watch(dirname(path), { persistent: false }, (_event, file) => {
      if (closed || (file !== null && file !== name)) return;
      if (timer) clearTimeout(timer);
      timer = setTimeout(reload, debounceMs);
    });
  } catch (err) {
    throw new CascadeError(ErrorCodes.POLICY_ERR_CONFIG, `${path}: cannot watch policy file`, { cause: err });
  }
  watcher.on('error', (err) => {
    if (!closed) onError(new CascadeError(ErrorCodes.POLICY_ERR_CONFIG, `${path}: ${err.message}`));
  });
  return {
    close() {
      if (closed) return;
      closed = true;
      if (timer) clearTimeout(timer);
      watcher.close();
    },
  };
}
