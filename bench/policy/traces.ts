/**
 * Network trace loaders for the policy simulator. Three formats:
 *
 * - mahimahi packet-delivery traces (one line per 1500-byte delivery opportunity: milliseconds
 *   since the start; a repeated number is several packets in that millisecond), as recorded by
 *   Saturator (Winstein et al., NSDI 2013) and replayed by mm-link, which loops the file;
 * - per-second CSV: one `value,unit` row per second, a bit rate (bps, kbps, Mbps, Gbps, bit/s
 *   forms, B/s, kB/s, MB/s) or a round-trip time (ms, s); a header row and `#` comments are
 *   skipped;
 * - the UCC 5G dataset CSV (Raca et al., MMSys 2020): one row per second with a header naming
 *   its columns; PINGAVG (ms, '-' when not measured) is the round-trip time.
 *
 * Capacity traces become delivery opportunities (mahimahi's model: each carries up to
 * {@link MTU_BYTES}); RTT traces a per-second series. Parsing is pure ({@link parseTrace});
 * {@link loadTrace} reads a file.
 */
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { CascadeError, ErrorCodes } from '../../cascade/errors.ts';

/** Bytes one delivery opportunity carries (mahimahi's MTU). */
export const MTU_BYTES = 1500;

/** Uplink capacity as delivery opportunities, looped with `periodMs` like mm-link does. */
export interface CapacityTrace {
  kind: 'capacity';
  name: string;
  format: 'mahimahi' | 'csv';
  /** Opportunity times within one period, ms, non-decreasing. */
  opportunities: Float64Array;
  /** Length of one period of the trace, ms (> 0). */
  periodMs: number;
}

/** Round-trip time, one value per second; missing seconds carry the previous value. */
export interface RttTrace {
  kind: 'rtt';
  name: string;
  format: 'ucc-5g' | 'csv';
  /** RTT of second i, ms. */
  rttMs: Float64Array;
}

export type Trace = CapacityTrace | RttTrace;

function formatError(name: string, what: string): CascadeError {
  return new CascadeError(ErrorCodes.TRACE_ERR_FORMAT, `${name}: ${what}`);
}

/**
 * Parses a mahimahi trace.
 * @throws {CascadeError} TRACE_ERR_FORMAT naming the first bad line, for decreasing times or an
 *   empty file.
 */
export function parseMahimahi(text: string, name: string): CapacityTrace {
  const times: number[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    if (!/^\d+$/.test(line))
      throw formatError(name, `line ${i + 1}: expected a whole number of ms, got "${line.slice(0, 40)}"`);
    const t = Number(line);
    if (times.length > 0 && t < times[times.length - 1]) {
      throw formatError(name, `line ${i + 1}: time ${t} ms goes back (previous ${times[times.length - 1]})`);
    }
    times.push(t);
  }
  if (times.length === 0) throw formatError(name, 'no delivery opportunities');
  // mm-link repeats the file after its last timestamp; a file of just "0" would loop at 0 ms.
  const periodMs = Math.max(1, times[times.length - 1]);
  return { kind: 'capacity', name, format: 'mahimahi', opportunities: Float64Array.from(times), periodMs };
}

/** Bits per second (or ms for RTT units) per unit of a per-second CSV row. */
const RATE_UNITS: Readonly<Record<string, number>> = {
  bps: 1,
  'bit/s': 1,
  'b/s': 1,
  kbps: 1e3,
  'kbit/s': 1e3,
  'kb/s': 1e3,
  mbps: 1e6,
  'mbit/s': 1e6,
  'mb/s': 1e6,
  gbps: 1e9,
  'gbit/s': 1e9,
  'byte/s': 8,
  'bytes/s': 8,
  'kbyte/s': 8e3,
  'mbyte/s': 8e6,
};
/** Byte-rate spellings with a capital B (case matters: MB/s is not Mb/s). */
const BYTE_UNITS: Readonly<Record<string, number>> = { 'B/s': 8, 'kB/s': 8e3, 'KB/s': 8e3, 'MB/s': 8e6 };
const RTT_UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000 };

function unitOf(raw: string): { kind: 'rate' | 'rtt'; scale: number } | null {
  const u = raw.trim();
  if (u in BYTE_UNITS) return { kind: 'rate', scale: BYTE_UNITS[u] };
  const l = u.toLowerCase();
  if (l in RATE_UNITS) return { kind: 'rate', scale: RATE_UNITS[l] };
  if (l in RTT_UNITS) return { kind: 'rtt', scale: RTT_UNITS[l] };
  return null;
}

/**
 * Parses a per-second `value,unit` CSV: bit rates become a capacity trace (opportunities spread
 * evenly within each second), times an RTT trace. One unit kind per file.
 * @throws {CascadeError} TRACE_ERR_FORMAT naming the first bad row or a mix of rate and time units.
 */
export function parsePerSecondCsv(text: string, name: string): Trace {
  const values: number[] = [];
  let kind: 'rate' | 'rtt' | null = null;
  let seenRow = false;
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '' || line.startsWith('#')) continue;
    const cells = line.split(',');
    const v = Number(cells[0]);
    const unit = cells.length === 2 ? unitOf(cells[1]) : null;
    if (cells.length !== 2 || cells[0].trim() === '' || !Number.isFinite(v) || unit === null) {
      // The first row may be a header.
      if (!seenRow) {
        seenRow = true;
        continue;
      }
      throw formatError(
        name,
        `line ${i + 1}: expected "value,unit" (unit bps/kbps/Mbps/Gbps/B/s/kB/s/MB/s or ms/s), got "${line.slice(0, 40)}"`,
      );
    }
    seenRow = true;
    if (v < 0) throw formatError(name, `line ${i + 1}: negative value ${v}`);
    if (kind !== null && unit.kind !== kind) throw formatError(name, `line ${i + 1}: mixes rates and times`);
    kind = unit.kind;
    values.push(v * unit.scale);
  }
  if (kind === null) throw formatError(name, 'no rows');
  if (kind === 'rtt') return { kind: 'rtt', name, format: 'csv', rttMs: Float64Array.from(values) };
  const opportunities: number[] = [];
  let carry = 0; // fractional packets carried into the next second, so the mean rate is exact
  for (let s = 0; s < values.length; s++) {
    const packets = values[s] / 8 / MTU_BYTES + carry;
    const whole = Math.floor(packets);
    carry = packets - whole;
    for (let k = 0; k < whole; k++) opportunities.push(s * 1000 + Math.floor(((k + 0.5) * 1000) / whole));
  }
  return {
    kind: 'capacity',
    name,
    format: 'csv',
    opportunities: Float64Array.from(opportunities),
    periodMs: values.length * 1000,
  };
}

/**
 * Parses a UCC 5G dataset CSV into its RTT series: PINGAVG per row, rows grouped by their
 * Timestamp second (several rows may share one), '-' filled with the previous value (the first
 * measured value before any measurement).
 * @throws {CascadeError} TRACE_ERR_FORMAT when the header lacks Timestamp or PINGAVG or no row
 *   has a measured PINGAVG.
 */
export function parseUcc5g(text: string, name: string): RttTrace {
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== '');
  if (lines.length === 0) throw formatError(name, 'empty file');
  const header = lines[0].split(',').map((h) => h.trim());
  const ts = header.indexOf('Timestamp');
  const ping = header.indexOf('PINGAVG');
  if (ts < 0 || ping < 0)
    throw formatError(name, 'header has no Timestamp and PINGAVG columns (not a UCC 5G CSV)');
  const perSecond: (number | null)[] = [];
  let lastStamp: string | null = null;
  for (let i = 1; i < lines.length; i++) {
    const cells = lines[i].split(',');
    if (cells.length < header.length)
      throw formatError(name, `line ${i + 1}: ${cells.length} columns, header has ${header.length}`);
    const stamp = cells[ts].trim();
    const raw = cells[ping].trim();
    const v = raw === '-' || raw === '' ? null : Number(raw);
    if (v !== null && !(Number.isFinite(v) && v >= 0))
      throw formatError(name, `line ${i + 1}: PINGAVG "${raw}" is not a time in ms`);
    if (stamp !== lastStamp) {
      perSecond.push(v);
      lastStamp = stamp;
    } else if (v !== null) {
      perSecond[perSecond.length - 1] = v;
    }
  }
  const first = perSecond.find((v) => v !== null);
  if (first === undefined || first === null) throw formatError(name, 'no measured PINGAVG value');
  const rttMs = new Float64Array(perSecond.length);
  let prev = first;
  perSecond.forEach((v, i) => {
    if (v !== null) prev = v;
    rttMs[i] = prev;
  });
  return { kind: 'rtt', name, format: 'ucc-5g', rttMs };
}

/**
 * Parses a trace, recognising the format from the content: a header with PINGAVG is UCC 5G,
 * rows of `value,unit` are per-second CSV, lines of whole numbers are mahimahi.
 * @throws {CascadeError} TRACE_ERR_FORMAT when no format fits (the message says what was seen).
 */
export function parseTrace(text: string, name: string): Trace {
  const first = text.split(/\r?\n/).find((l) => l.trim() !== '' && !l.trim().startsWith('#'));
  if (first === undefined) throw formatError(name, 'empty trace');
  if (first.includes('PINGAVG')) return parseUcc5g(text, name);
  if (first.includes(',')) return parsePerSecondCsv(text, name);
  if (/^\s*\d+\s*$/.test(first)) return parseMahimahi(text, name);
  throw formatError(
    name,
    `not a mahimahi, per-second CSV or UCC 5G trace (first line "${first.slice(0, 40)}")`,
  );
}

/**
 * Reads and parses a trace file.
 * @throws {CascadeError} DATA_ERR_NOT_FOUND if it cannot be read; TRACE_ERR_FORMAT as {@link parseTrace}.
 */
export async function loadTrace(path: string): Promise<Trace> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new CascadeError(ErrorCodes.DATA_ERR_NOT_FOUND, `${path}: cannot read trace`, { cause: err });
  }
  return parseTrace(text, basename(path));
}

/** Mean capacity of a capacity trace, bit/s. */
export function meanCapacityBps(t: CapacityTrace): number {
  return (t.opportunities.length * MTU_BYTES * 8) / (t.periodMs / 1000);
}

/** Capacity per second over `seconds` seconds (looping), bit/s: the plots' reference line. */
export function capacityPerSecond(t: CapacityTrace, seconds: number): Float64Array {
  const out = new Float64Array(seconds);
  const period = t.periodMs;
  for (let rep = 0; rep * period < seconds * 1000; rep++) {
    for (const o of t.opportunities) {
      const s = Math.floor((rep * period + o) / 1000);
      if (s < seconds) out[s] += MTU_BYTES * 8;
    }
  }
  return out;
}

/** RTT of an RTT trace at time `ms` (looping), ms. */
export function rttAt(t: RttTrace, ms: number): number {
  const n = t.rttMs.length;
  const i = Math.floor(ms / 1000) % n;
  return t.rttMs[i < 0 ? i + n : i];
}
