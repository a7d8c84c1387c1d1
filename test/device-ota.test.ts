/**
 * `cascade device --ota URL`: the device runs its camera while the OTA agent installs a signed
 * release from a TUF repository on loopback and hot-swaps it into the running pipeline; the
 * policy and the metrics follow the new model, and no frame is lost in the swap.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '../cascade/service/log.ts';
import { DeviceApp } from '../device/app.ts';
import { loadDeviceConfig } from '../device/config.ts';
import { loadBundledSample } from '../models/data/load.ts';
import { serveStatic } from '../ota/serve.ts';
import { centroidModel, makeRepo, probeSet, signAndPublish } from './fixtures/ota-fixtures.ts';

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'device-ota-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('device with OTA', () => {
  it('installs a signed release while the camera runs and classifies on with it', async () => {
    // The agent health-checks on the first 200 bundled images: the card states its accuracy there.
    const probe = await probeSet(200);
    const release = await centroidModel(join(dir, 'release'), probe, { variant: 1 });
    const { repo, keys, now } = await makeRepo(join(dir, 'repo'));
    await repo.addModel({ cardPath: release.cardPath, hardwareClass: 'cpu-x64', rollout: 100, now });
    await signAndPublish(repo, keys, now);
    const srv = await serveStatic(join(repo.dir, 'published'));
    const config = loadDeviceConfig({
      flags: {
        deviceId: 'cam-ota',
        source: { fps: 50, frames: 120 },
        ota: {
          url: srv.url,
          dir: join(dir, 'device'),
          trustedRoot: repo.metadataPath('1.root.json'),
          hardwareClass: 'cpu-x64',
        },
      },
    });
    const app = await DeviceApp.build(config, {
      dataset: await loadBundledSample(),
      logger: createLogger({ service: 'device', level: 'silent' }),
    });
    try {
      await app.start();
      const factory = app.model.current.card.name;
      const status = await app.ota?.checkNow();
      assert.equal(status?.state, 'current', JSON.stringify(status?.lastError));
      assert.equal(status?.current?.release, 1);
      assert.notEqual(app.model.current.card.name, factory);
      assert.equal(app.model.current.card.name, release.card.name);
      const processedAtSwap = app.counts.processed;
      const report = await app.finished;
      assert.ok(report.processed > processedAtSwap, 'frames after the swap ran on the new model');
      const d = report.dropped;
      assert.equal(report.processed + d.backpressure + d.source + d.error, report.frames);
      assert.equal(d.error, 0);
      assert.match(
        await app.metrics.text(),
        new RegExp(`cascade_model_info\\{tier="device",model="${release.card.name}"`),
      );
    } finally {
      await app.shutdown();
      await srv.close();
    }
  });
});
