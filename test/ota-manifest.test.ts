/**
 * ota/manifest.ts, pure: the stable rollout hash (deterministic, uniform, monotone in the
 * percentage), release selection (tier, hardware class, rollout, never downward, failed releases
 * skipped), manifest parsing, exact decimal encoding of the card's real numbers, and the check
 * that a card matches the manifest it was signed with.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ErrorCodes } from '../cascade/errors.ts';
import type { ModelCard } from '../models/card.ts';
import {
  checkCardMatchesManifest,
  decodeInput,
  encodeInput,
  inRollout,
  listModelTargets,
  type ModelTarget,
  manifestFor,
  rolloutBucket,
  selectUpdate,
  type TargetLike,
} from '../ota/manifest.ts';

const card: ModelCard = {
  schemaVersion: 1,
  name: 'device-kd',
  tier: 'device',
  version: '2026-11-22',
  arch: {},
  params: 1,
  files: [{ file: 'm.onnx', bytes: 100, sha256: 'a'.repeat(64), form: 'qdq-cpu' }],
  input: {
    name: 'input',
    layout: 'NCHW',
    height: 28,
    width: 28,
    colour: 'gray',
    mean: [0.286],
    std: [0.353],
    quant: { scale: 0.01110925991088152, zeroPoint: 73, dtype: 'uint8' },
  },
  output: { name: 'logits', classes: 10 },
  labels: [],
  temperature: 1.06,
  metrics: { valAccuracy: 0.91, testAccuracy: 0.9062, eceBefore: 0, eceAfter: 0 },
  reliability: [],
  thresholds: { accept: 0.5552749037742615 },
  training: {},
  dataHash: 'x',
  createdAt: '2026-11-22T00:00:00Z',
};

function target(
  release: number,
  opts: { hw?: string; rollout?: number; sha?: string; tier?: 'device' | 'gateway' } = {},
): ModelTarget {
  const c = { ...card, tier: opts.tier ?? 'device' };
  const meta = manifestFor(c, {
    hardwareClass: opts.hw ?? 'cpu-arm64',
    release,
    rollout: opts.rollout ?? 100,
    cardPath: `device/x/r${release}/card.json`,
    cardLength: 10,
    cardSha256: 'c'.repeat(64),
  });
  return {
    path: `device/x/r${release}/m.onnx`,
    length: 100,
    sha256: opts.sha ?? String(release % 10).repeat(64),
    meta,
  };
}

const device = {
  deviceId: 'cam-0001',
  tier: 'device' as const,
  hardwareClass: 'cpu-arm64',
  failed: new Set<string>(),
};

describe('rollout bucket', () => {
  it('is stable, in [0, 100), and differs between devices and channels', () => {
    const b = rolloutBucket('cam-0001', 'device/cpu-arm64');
    assert.equal(rolloutBucket('cam-0001', 'device/cpu-arm64'), b);
    assert.ok(b >= 0 && b < 100);
    assert.notEqual(rolloutBucket('cam-0002', 'device/cpu-arm64'), b);
    assert.notEqual(rolloutBucket('cam-0001', 'device/cpu-x64'), b);
    assert.equal(inRollout('cam-0001', 'c', 0), false);
    assert.equal(inRollout('cam-0001', 'c', 100), true);
  });

  it('selects about the requested share of a fleet, and only adds devices as it grows', () => {
    const ids = Array.from({ length: 4000 }, (_, i) => `cam-${i}`);
    for (const pct of [1, 10, 50, 90]) {
      const share = ids.filter((id) => inRollout(id, 'device/x', pct)).length / ids.length;
      assert.ok(Math.abs(share - pct / 100) < 0.025, `${pct}%: ${share}`);
    }
    fc.assert(
      fc.property(
        fc.string(),
        fc.integer({ min: 0, max: 100 }),
        fc.integer({ min: 0, max: 100 }),
        (id, a, b) => {
          const [lo, hi] = a < b ? [a, b] : [b, a];
          return !inRollout(id, 'device/x', lo) || inRollout(id, 'device/x', hi);
        },
      ),
    );
  });
});

describe('selectUpdate', () => {
  it('takes the highest release of its tier and hardware class', () => {
    const d = selectUpdate(
      [target(1), target(3), target(2), target(9, { hw: 'gpu' }), target(8, { tier: 'gateway' })],
      device,
    );
    assert.equal(d.action, 'install');
    assert.equal(d.action === 'install' && d.target.meta.release, 3);
  });

  it('never installs a target for another hardware class', () => {
    assert.deepEqual(selectUpdate([target(5, { hw: 'gpu-x64' })], device), {
      action: 'none',
      reason: 'no-target-for-hardware',
    });
  });

  it('never moves down, and is up to date on its own release', () => {
    const current = { release: 3, sha256: '3'.repeat(64) };
    assert.equal(selectUpdate([target(1), target(2), target(3)], { ...device, current }).action, 'none');
    const d = selectUpdate([target(2)], { ...device, current });
    assert.equal(d.action === 'none' && d.reason, 'up-to-date');
  });

  it('honours the rollout: a device outside it stays, or takes the newest release that includes it', () => {
    const outId = ['a', 'b', 'c', 'd', 'e', 'f'].find(
      (id) => !inRollout(id, 'device/cpu-arm64', 30),
    ) as string;
    const out = { ...device, deviceId: outId };
    const d = selectUpdate([target(2, { rollout: 30 })], out);
    assert.equal(d.action === 'none' && d.reason, 'not-in-rollout');
    const older = selectUpdate([target(1, { rollout: 100 }), target(2, { rollout: 30 })], out);
    assert.equal(older.action === 'install' && older.target.meta.release, 1);
    const inId = ['a', 'b', 'c', 'd', 'e', 'f'].find((id) => inRollout(id, 'device/cpu-arm64', 30)) as string;
    const inside = selectUpdate([target(1), target(2, { rollout: 30 })], { ...device, deviceId: inId });
    assert.equal(inside.action === 'install' && inside.target.meta.release, 2);
  });

  it('skips a release that failed here', () => {
    const failed = new Set(['2'.repeat(64)]);
    const d = selectUpdate([target(1), target(2)], { ...device, failed });
    assert.equal(d.action === 'install' && d.target.meta.release, 1);
    const none = selectUpdate([target(2)], {
      ...device,
      failed,
      current: { release: 1, sha256: '1'.repeat(64) },
    });
    assert.equal(none.action === 'none' && none.reason, 'previously-failed');
  });
});

describe('manifest', () => {
  it('carries real numbers as exact decimal strings (canonical JSON has no floats)', () => {
    const enc = encodeInput(card.input);
    assert.deepEqual(enc.mean, ['0.286']);
    assert.equal(enc.quant?.scale, '0.01110925991088152');
    assert.deepEqual(decodeInput(enc), card.input);
    fc.assert(
      fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (x) => {
        const spec = { ...card.input, mean: [x] };
        return Object.is(decodeInput(encodeInput(spec)).mean[0], x === 0 ? 0 : x);
      }),
    );
  });

  it('lists valid model targets and reports malformed manifests', () => {
    const good = target(1);
    const targets: Record<string, TargetLike> = {
      [good.path]: { length: 100, hashes: { sha256: good.sha256 }, custom: { cascade: good.meta } },
      'bad.onnx': {
        length: 1,
        hashes: { sha256: 'b'.repeat(64) },
        custom: { cascade: { ...good.meta, rollout: 250 } },
      },
      'nohash.onnx': { length: 1, hashes: { md5: 'x' }, custom: { cascade: good.meta } },
      'card.json': { length: 1, hashes: { sha256: 'c'.repeat(64) }, custom: { cascade: { kind: 'card' } } },
      'other.bin': { length: 1, hashes: {}, custom: {} },
    };
    const { models, invalid } = listModelTargets(targets);
    assert.deepEqual(
      models.map((m) => m.path),
      [good.path],
    );
    assert.deepEqual(invalid.map((i) => i.path).sort(), ['bad.onnx', 'nohash.onnx']);
  });

  it('accepts the card it was made from and rejects one that does not match', () => {
    const t = { ...target(1), sha256: card.files[0].sha256 };
    assert.doesNotThrow(() => checkCardMatchesManifest(card, t, 'cpu-arm64'));
    const cases: [ModelCard, string, RegExp][] = [
      [card, 'cpu-x64', /hardware class/],
      [{ ...card, tier: 'gateway' }, 'cpu-arm64', /tier/],
      [{ ...card, input: { ...card.input, height: 32 } }, 'cpu-arm64', /input spec/],
      [{ ...card, version: 'other' }, 'cpu-arm64', /manifest device-kd@2026-11-22/],
      [{ ...card, files: [{ ...card.files[0], sha256: 'e'.repeat(64) }] }, 'cpu-arm64', /is not the target/],
    ];
    for (const [c, hw, re] of cases) {
      assert.throws(() => checkCardMatchesManifest(c, t, hw), {
        code: ErrorCodes.OTA_ERR_HARDWARE_MISMATCH,
        message: re,
      });
    }
  });
});
