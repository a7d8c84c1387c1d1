/**
 * The frame ledger of a load or fault run, seen from the devices: every offloaded frame ends in
 * exactly one state, decided by what a real device does with it:
 *
 * - `answered`: an `ok` answer arrived within the frame's budget (the remote label is used);
 * - `refused`:  an `expired`, `overloaded` or `error` answer arrived within the budget (the device
 *               keeps its local answer at once);
 * - `missed`:   no answer by the deadline (gateway killed, broker down, answer late): the device's
 *               local answer stands and the miss is counted. An answer after that is counted as
 *               `late` and changes nothing.
 *
 * Pure: times are passed in (ms, one monotonic clock), nothing is scheduled. Deadlines are
 * relative to the sender's own clock, so skew between machines cannot move a frame between
 * states. `unaccounted` counts frames that are still open after {@link FrameLedger.close}, or
 * answers the ledger cannot place (unknown frame, a second answer): both must be 0.
 */
import type { AnswerStatus } from '../../cascade/protocol.ts';

/** Terminal states of a frame. */
export type FrameState = 'answered' | 'refused' | 'missed';

interface Open {
  key: string;
  sentAt: number;
  deadline: number;
}

/** Counts and latencies of a run. */
export interface LedgerSummary {
  frames: number;
  answered: number;
  refused: number;
  missed: number;
  /** Answers that arrived after their frame was counted as missed. */
  late: number;
  /** Refusals by status (expired, overloaded, error). */
  refusedBy: Record<string, number>;
  /** Frames still open, answers for unknown frames, duplicate answers. */
  unaccounted: number;
  duplicates: number;
  unknown: number;
  /** answered / frames (0 when no frames). */
  withinBudget: number;
  /** Send-to-answer latency of every answer received (any status, late ones included), ms. */
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

/** Percentile of an ascending array (nearest rank); 0 when empty. */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

/** The ledger. Frames are keyed by device id and frame id. */
export class FrameLedger {
  // Insertion order = send order; with equal budgets it is also deadline order, which keeps the
  // sweep O(expired). Unequal budgets still work: the sweep scans past unexpired frames.
  readonly #open = new Map<string, Open>();
  readonly #closedAt = new Map<string, { state: FrameState; at: number; sentAt: number }>();
  readonly #retainMs: number;
  readonly #latencies: number[] = [];
  #frames = 0;
  #answered = 0;
  #refused = 0;
  #missed = 0;
  #late = 0;
  #duplicates = 0;
  #unknown = 0;
  #uniformBudget: number | undefined;
  #mixed = false;
  readonly #refusedBy: Record<string, number> = {};

  /**
   * @param retainMs how long a closed frame is remembered to place late or duplicate answers
   *   (default 60 000 ms; bounds memory over long soaks).
   */
  constructor(retainMs = 60_000) {
    this.#retainMs = retainMs;
  }

  static key(deviceId: string, frameId: number): string {
    return `${deviceId}#${frameId}`;
  }

  /** Records a frame sent at `sentAt` with `budgetMs` of budget. */
  sent(deviceId: string, frameId: number, sentAt: number, budgetMs: number): void {
    const key = FrameLedger.key(deviceId, frameId);
    if (this.#open.has(key) || this.#closedAt.has(key)) throw new RangeError(`frame ${key} sent twice`);
    if (this.#uniformBudget === undefined) this.#uniformBudget = budgetMs;
    else if (this.#uniformBudget !== budgetMs) this.#mixed = true;
    this.#open.set(key, { key, sentAt, deadline: sentAt + budgetMs });
    this.#frames++;
  }

  /** Records an answer received at `at`; returns the state it put the frame in, if any. */
  answer(deviceId: string, frameId: number, status: AnswerStatus, at: number): FrameState | undefined {
    const key = FrameLedger.key(deviceId, frameId);
    const open = this.#open.get(key);
    if (open === undefined) {
      const closed = this.#closedAt.get(key);
      if (closed === undefined) this.#unknown++;
      else if (closed.state === 'missed') {
        this.#late++;
        this.#latencies.push(at - closed.sentAt);
      } else this.#duplicates++;
      return undefined;
    }
    this.#latencies.push(at - open.sentAt);
    if (at > open.deadline) {
      // The device's deadline passed before this answer: it already used its local answer.
      this.#close(open, 'missed', at);
      this.#late++;
      return 'missed';
    }
    if (status === 'ok') {
      this.#close(open, 'answered', at);
      return 'answered';
    }
    this.#refusedBy[status] = (this.#refusedBy[status] ?? 0) + 1;
    this.#close(open, 'refused', at);
    return 'refused';
  }

  /** Closes every frame whose deadline is before `now` as missed; returns how many. */
  sweep(now: number): number {
    let n = 0;
    for (const f of this.#open.values()) {
      if (f.deadline >= now) {
        if (this.#mixed) continue;
        break;
      }
      this.#close(f, 'missed', f.deadline);
      n++;
    }
    for (const [key, c] of this.#closedAt) {
      if (c.at >= now - this.#retainMs) break;
      this.#closedAt.delete(key);
    }
    return n;
  }

  /** Frames without a terminal state yet. */
  get open(): number {
    return this.#open.size;
  }

  get frames(): number {
    return this.#frames;
  }

  #close(f: Open, state: FrameState, at: number): void {
    this.#open.delete(f.key);
    this.#closedAt.set(f.key, { state, at, sentAt: f.sentAt });
    if (state === 'answered') this.#answered++;
    else if (state === 'refused') this.#refused++;
    else this.#missed++;
  }

  /** The summary; frames still open count as unaccounted (call {@link sweep} past the last deadline first). */
  summary(): LedgerSummary {
    const lat = Float64Array.from(this.#latencies).sort();
    const unaccounted =
      this.#frames - (this.#answered + this.#refused + this.#missed) + this.#unknown + this.#duplicates;
    return {
      frames: this.#frames,
      answered: this.#answered,
      refused: this.#refused,
      missed: this.#missed,
      late: this.#late,
      refusedBy: { ...this.#refusedBy },
      unaccounted,
      duplicates: this.#duplicates,
      unknown: this.#unknown,
      withinBudget: this.#frames === 0 ? 0 : this.#answered / this.#frames,
      p50Ms: percentile(lat, 0.5),
      p99Ms: percentile(lat, 0.99),
      maxMs: lat.length === 0 ? 0 : lat[lat.length - 1],
    };
  }
}
