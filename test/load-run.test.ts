/**
 * `npm run bench:load` end to end, small: the command starts Mosquitto, two gateway processes and
 * simulated cameras, prints the JSON contract, and its books balance — every frame accounted for,
 * the broker's shared subscription spreading the offloads over both replicas, each replica under
 * its memory bound. (Speed is measured by the command itself, not asserted here.)
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { mosquittoPath } from '../bench/load/mosquitto.ts';
import type { LoadReport } from '../bench/load/run.ts';

const SKIP = mosquittoPath() ? undefined : 'mosquitto is not installed (apt-get install mosquitto)';
const RUN = fileURLToPath(new URL('../bench/load/run.ts', import.meta.url));

describe('bench:load', { skip: SKIP }, () => {
  it('--json prints the contract; frames balance; both replicas share the load within their memory bound', () => {
    const r = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        RUN,
        '--replicas',
        '2',
        '--cameras',
        '12',
        '--fps',
        '10',
        '--seconds',
        '3',
        '--budget-ms',
        '500',
        '--json',
      ],
      { encoding: 'utf8', timeout: 90_000 },
    );
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 1, 'one JSON line on stdout');
    const report = JSON.parse(lines[0]) as LoadReport;
    assert.deepEqual(Object.keys(report).slice(0, 6), [
      'frames',
      'unaccounted',
      'withinBudget',
      'p99Ms',
      'budgetMs',
      'replicas',
    ]);
    assert.equal(report.replicas, 2);
    assert.equal(report.budgetMs, 500);
    assert.ok(report.frames >= 12 * 10 * 2, `${report.frames} frames`);
    assert.equal(report.unaccounted, 0);
    assert.equal(report.answered + report.refused + report.missed, report.frames);
    assert.ok(report.withinBudget >= 0 && report.withinBudget <= 1);
    assert.equal(
      report.gatewayCounted,
      report.frames - report.publishErrors,
      'the gateways saw every frame once',
    );
    const served = report.perReplica.map((p) => p.served);
    assert.equal(served.length, 2);
    assert.ok(
      served.every((n) => n > 0),
      `the shared subscription spread the load: ${served.join(' / ')}`,
    );
    assert.equal(report.memoryOk, true, `peak RSS ${report.maxRssMb} MB of ${report.memoryBoundMb}`);
  });
});
