/**
 * The shared uplink of the simulator, replayed from a capacity trace the way mm-link does it:
 * one FIFO byte queue drained by delivery opportunities of {@link MTU_BYTES} each, the trace
 * looping after its period; an opportunity that finds the queue empty is lost. Because the queue
 * is FIFO, a message's delivery time depends only on what was sent before it, so it is computed
 * when the message is sent. Also: the event queue the simulator runs on.
 */
import { type CapacityTrace, MTU_BYTES } from './traces.ts';

/** Per-message and per-packet overheads added to a payload on the wire. */
export interface WireOverhead {
  /** MQTT fixed header, topic and the envelope header, bytes; default 100. */
  messageBytes: number;
  /** TCP/IP headers per packet, bytes; default 40 (packets carry MTU − this of data). */
  packetBytes: number;
}

export const DEFAULT_OVERHEAD: Readonly<WireOverhead> = Object.freeze({ messageBytes: 100, packetBytes: 40 });

/** Bytes a payload of `payload` bytes takes on the uplink. */
export function wireBytes(payload: number, o: WireOverhead = DEFAULT_OVERHEAD): number {
  const data = payload + o.messageBytes;
  const packets = Math.max(1, Math.ceil(data / (MTU_BYTES - o.packetBytes)));
  return data + packets * o.packetBytes;
}

export class Uplink {
  #opp: Float64Array;
  #period: number;
  /** Index (unrolled over loops) of the opportunity being filled, and bytes left in it. */
  #i = 0;
  #left = MTU_BYTES;
  #bytes = 0;

  constructor(trace: CapacityTrace) {
    if (trace.opportunities.length === 0) throw new RangeError(`${trace.name}: no delivery opportunities`);
    this.#opp = trace.opportunities;
    this.#period = trace.periodMs;
  }

  /** Bytes sent so far. */
  get bytes(): number {
    return this.#bytes;
  }

  #time(i: number): number {
    const n = this.#opp.length;
    return this.#opp[i % n] + Math.floor(i / n) * this.#period;
  }

  /** First unrolled opportunity index at or after time t. */
  #firstAt(t: number): number {
    const n = this.#opp.length;
    const rep = Math.max(0, Math.floor(t / this.#period));
    const within = t - rep * this.#period;
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#opp[mid] < within) lo = mid + 1;
      else hi = mid;
    }
    return rep * n + lo;
  }

  /**
   * Queues `bytes` at time `at` (ms; calls must come in non-decreasing `at`).
   * @returns the time its last byte is delivered, ms.
   */
  send(at: number, bytes: number): number {
    this.#bytes += bytes;
    // Opportunities before `at` passed with nothing of this message: an idle link wastes them.
    const first = this.#firstAt(at);
    if (first > this.#i) {
      this.#i = first;
      this.#left = MTU_BYTES;
    }
    let rest = bytes;
    for (;;) {
      const take = Math.min(rest, this.#left);
      rest -= take;
      this.#left -= take;
      const t = this.#time(this.#i);
      if (this.#left === 0) {
        this.#i++;
        this.#left = MTU_BYTES;
      }
      if (rest === 0) return t;
    }
  }
}

/** Min-heap of timed events; equal times pop in insertion order (deterministic runs). */
export class EventQueue<T> {
  #heap: { at: number; seq: number; ev: T }[] = [];
  #seq = 0;

  get size(): number {
    return this.#heap.length;
  }

  push(at: number, ev: T): void {
    const h = this.#heap;
    h.push({ at, seq: this.#seq++, ev });
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.#less(h[i], h[p])) {
        [h[i], h[p]] = [h[p], h[i]];
        i = p;
      } else break;
    }
  }

  /** The earliest event, or undefined when empty. */
  pop(): { at: number; ev: T } | undefined {
    const h = this.#heap;
    if (h.length === 0) return undefined;
    const top = h[0];
    const last = h.pop() as (typeof h)[number];
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.#less(h[l], h[m])) m = l;
        if (r < h.length && this.#less(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return { at: top.at, ev: top.ev };
  }

  #less(a: { at: number; seq: number }, b: { at: number; seq: number }): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }
}
