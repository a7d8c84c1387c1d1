import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import {
  capacityPerSecond,
  loadTrace,
  MTU_BYTES,
  meanCapacityBps,
  parseMahimahi,
  parsePerSecondCsv,
  parseTrace,
  parseUcc5g,
  rttAt,
} from '../bench/policy/traces.ts';
import { CascadeError } from '../cascade/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'trace-loaders-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

const isFormatError = (e: unknown) => e instanceof CascadeError && e.code === 'TRACE_ERR_FORMAT';

describe('mahimahi traces', () => {
  it('reads delivery opportunities, repeated milliseconds and the loop period', async () => {
    const t = await loadTrace(write('a.up', '0\n3\n3\n3\n10\n1000\n'));
    assert.equal(t.kind, 'capacity');
    if (t.kind !== 'capacity') return;
    assert.equal(t.format, 'mahimahi');
    assert.deepEqual(Array.from(t.opportunities), [0, 3, 3, 3, 10, 1000]);
    assert.equal(t.periodMs, 1000);
    assert.equal(meanCapacityBps(t), 6 * MTU_BYTES * 8);
    // Looping: the next period starts at 1000 ms, so second 1 holds 1000 and 1000 + 0…10.
    assert.deepEqual(
      Array.from(capacityPerSecond(t, 3)),
      [5, 6, 6].map((k) => k * MTU_BYTES * 8),
    );
  });

  it('a file of just "1" is a fixed 12 Mbit/s link', () => {
    const t = parseMahimahi('1\n', 'one');
    assert.equal(meanCapacityBps(t), 12e6);
  });

  it('refuses times that go back, non-numbers and empty files, naming the line', () => {
    assert.throws(
      () => parseMahimahi('5\n4\n', 'x'),
      (e: unknown) => isFormatError(e) && /line 2/.test((e as Error).message),
    );
    assert.throws(
      () => parseMahimahi('5\nabc\n', 'x'),
      (e: unknown) => isFormatError(e) && /line 2/.test((e as Error).message),
    );
    assert.throws(() => parseMahimahi('\n\n', 'x'), isFormatError);
  });

  it('property: any non-decreasing list of times round-trips', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 5000 }), { minLength: 1, maxLength: 300 }), (xs) => {
        const sorted = [...xs].sort((a, b) => a - b);
        const t = parseMahimahi(`${sorted.join('\n')}\n`, 'p');
        return t.opportunities.length === sorted.length && t.opportunities.every((v, i) => v === sorted[i]);
      }),
    );
  });
});

describe('per-second CSV traces', () => {
  it('reads rates in any unit, with a header and comments, keeping the mean rate exact', () => {
    const t = parsePerSecondCsv('# uplink\nrate,unit\n1.2,Mbps\n600,kbps\n150,kB/s\n', 'r');
    assert.equal(t.kind, 'capacity');
    if (t.kind !== 'capacity') return;
    assert.equal(t.periodMs, 3000);
    const perSecond = Array.from(capacityPerSecond(t, 3)).map((b) => b / (MTU_BYTES * 8));
    // 100 packets, 50, 100: fractional packets carry over, so every second is whole here.
    assert.deepEqual(perSecond, [100, 50, 100]);
    for (const o of t.opportunities) assert.ok(o >= 0 && o < 3000);
  });

  it('distinguishes MB/s from Mb/s', () => {
    const bytes = parsePerSecondCsv('1,MB/s\n', 'B');
    const bits = parsePerSecondCsv('1,Mb/s\n', 'b');
    assert.ok(bytes.kind === 'capacity' && bits.kind === 'capacity');
    if (bytes.kind === 'capacity' && bits.kind === 'capacity') {
      assert.equal(bytes.opportunities.length, 666); // 8 Mbit in 1500-byte packets
      assert.equal(bits.opportunities.length, 83);
    }
  });

  it('reads round-trip times as an RTT trace', () => {
    const t = parsePerSecondCsv('20,ms\n0.03,s\n', 'rtt');
    assert.equal(t.kind, 'rtt');
    if (t.kind === 'rtt') {
      assert.deepEqual(Array.from(t.rttMs), [20, 30]);
      assert.equal(rttAt(t, 1500), 30);
      assert.equal(rttAt(t, 2500), 20); // loops
    }
  });

  it('refuses unknown units, mixed kinds, negative values and a second header', () => {
    assert.throws(() => parsePerSecondCsv('1,furlongs\n2,furlongs\n', 'x'), isFormatError);
    assert.throws(
      () => parsePerSecondCsv('1,Mbps\n20,ms\n', 'x'),
      (e: unknown) => isFormatError(e) && /mixes/.test((e as Error).message),
    );
    assert.throws(() => parsePerSecondCsv('-1,Mbps\n', 'x'), isFormatError);
    assert.throws(
      () => parsePerSecondCsv('a,b\n1,Mbps\nc,d\n', 'x'),
      (e: unknown) => isFormatError(e) && /line 3/.test((e as Error).message),
    );
    assert.throws(() => parsePerSecondCsv('rate,unit\n', 'x'), isFormatError);
  });

  it('property: the mean capacity matches the mean of the rows within one packet per period', () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0, max: 50, noNaN: true }), { minLength: 1, maxLength: 60 }),
        (mbps) => {
          const t = parsePerSecondCsv(mbps.map((v) => `${v},Mbps`).join('\n'), 'p');
          if (t.kind !== 'capacity') return false;
          const want = mbps.reduce((a, b) => a + b, 0) * 1e6 * 1000;
          const got = t.opportunities.length * MTU_BYTES * 8 * 1000;
          return Math.abs(got - want) <= MTU_BYTES * 8 * 1000;
        },
      ),
    );
  });
});

describe('UCC 5G traces', () => {
  const header =
    'Timestamp,Longitude,Latitude,Speed,Operatorname,CellID,NetworkMode,RSRP,RSRQ,SNR,CQI,RSSI,DL_bitrate,UL_bitrate,State,PINGAVG,PINGMIN,PINGMAX,PINGSTDEV,PINGLOSS';
  const row = (stamp: string, ping: string) =>
    `${stamp},-8.3,51.9,0,B,12,5G,-98,-10,3.0,12,-88,222,53,D,${ping},-,-,-,-`;

  it('reads PINGAVG per second, merges rows of one second and fills gaps', async () => {
    const text = [
      header,
      row('2019.12.16_07.22.43', '-'),
      row('2019.12.16_07.22.44', '-'),
      row('2019.12.16_07.22.44', '80.0'),
      row('2019.12.16_07.22.45', '-'),
      row('2019.12.16_07.22.46', '95.5'),
    ].join('\n');
    const t = await loadTrace(write('ucc.csv', text));
    assert.equal(t.kind, 'rtt');
    if (t.kind !== 'rtt') return;
    assert.equal(t.format, 'ucc-5g');
    assert.deepEqual(Array.from(t.rttMs), [80, 80, 80, 95.5]);
  });

  it('refuses a CSV without the columns or without any measured ping', () => {
    assert.throws(() => parseUcc5g('Timestamp,Speed\n1,2\n', 'x'), isFormatError);
    assert.throws(() => parseUcc5g(`${header}\n${row('t', '-')}\n`, 'x'), isFormatError);
    assert.throws(() => parseUcc5g(`${header}\n${row('t', 'fast')}\n`, 'x'), isFormatError);
    assert.throws(() => parseUcc5g(`${header}\n1,2,3\n`, 'x'), isFormatError);
  });
});

describe('parseTrace', () => {
  it('recognises each format from the content', () => {
    assert.equal(parseTrace('0\n1\n', 'm').kind, 'capacity');
    assert.equal(parseTrace('5,Mbps\n', 'c').kind, 'capacity');
    assert.equal(parseTrace('Timestamp,PINGAVG\nx,10\n', 'u').kind, 'rtt');
    assert.throws(() => parseTrace('hello world\n', 'x'), isFormatError);
    assert.throws(() => parseTrace('', 'x'), isFormatError);
  });

  it('property (fuzz): arbitrary text either parses or fails with TRACE_ERR_FORMAT', () => {
    const alphabet = fc.constantFrom(
      '0',
      '1',
      '7',
      ',',
      '\n',
      '.',
      '-',
      'M',
      'b',
      'p',
      's',
      'm',
      ' ',
      '#',
      'k',
      'B',
      '/',
    );
    fc.assert(
      fc.property(
        fc.array(alphabet, { maxLength: 80 }).map((cs) => cs.join('')),
        (text) => {
          try {
            const t = parseTrace(text, 'fuzz');
            return t.kind === 'rtt'
              ? t.rttMs.every(Number.isFinite)
              : t.periodMs > 0 && t.opportunities.every(Number.isFinite);
          } catch (e) {
            return isFormatError(e);
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('reports a missing file as not found', async () => {
    await assert.rejects(
      loadTrace(join(dir, 'nope.up')),
      (e: unknown) => e instanceof CascadeError && e.code === 'DATA_ERR_NOT_FOUND',
    );
  });
});
