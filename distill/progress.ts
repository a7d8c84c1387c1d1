/**
 * Progress reporting for long training steps: a live bar with ETA, loss and accuracy on a
 * terminal (cli-progress), one line per interval when the output is a file or a pipe, so a
 * background run's log is readable with `tail -f`.
 */
import cliProgress from 'cli-progress';
import type { EpochRecord } from './train.ts';

export interface StepStats {
  loss: number;
  acc: number;
  lr: number;
}

export interface Progress {
  /** A free-form line (backend choice, resume notes). */
  log(line: string): void;
  startEpoch(epoch: number, epochs: number, steps: number, startStep: number): void;
  step(done: number, stats: StepStats): void;
  endEpoch(record: EpochRecord): void;
  stop(): void;
}

/** Discards everything (tests). */
export const silentProgress: Progress = {
  log() {},
  startEpoch() {},
  step() {},
  endEpoch() {},
  stop() {},
};

function fmtEpoch(r: EpochRecord): string {
  return (
    `epoch ${r.epoch}: loss ${r.loss.toFixed(4)} train acc ${r.trainAccuracy.toFixed(4)} ` +
    `val acc ${r.valAccuracy.toFixed(4)} (${r.seconds.toFixed(0)} s)`
  );
}

/**
 * Reports to a stream: a redrawn bar on a TTY, otherwise a line every `everySeconds`.
 * @param label prefixes every line, e.g. `teacher`.
 */
export function streamProgress(
  label: string,
  stream: NodeJS.WriteStream = process.stderr,
  everySeconds = 30,
): Progress {
  const tty = stream.isTTY === true;
  let bar: cliProgress.SingleBar | null = null;
  let epochLabel = '';
  let steps = 0;
  let startedAt = 0;
  let startStep = 0;
  let lastLine = 0;
  const write = (line: string): void => {
    stream.write(`[${label}] ${line}\n`);
  };
  return {
    log(line) {
      if (bar) bar.stop();
      bar = null;
      write(line);
    },
    startEpoch(epoch, epochs, n, from) {
      epochLabel = `epoch ${epoch + 1}/${epochs}`;
      steps = n;
      startStep = from;
      startedAt = performance.now();
      lastLine = startedAt;
      if (tty) {
        bar = new cliProgress.SingleBar(
          {
            format: `[${label}] ${epochLabel} {bar} {value}/{total} | ETA {eta_formatted} | loss {loss} acc {acc} lr {lr}`,
            stream,
            hideCursor: true,
            etaBuffer: 50,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(n, from, { loss: '-', acc: '-', lr: '-' });
      }
    },
    step(done, s) {
      const payload = { loss: s.loss.toFixed(4), acc: s.acc.toFixed(4), lr: s.lr.toExponential(2) };
      if (bar) {
        bar.update(done, payload);
        return;
      }
      const now = performance.now();
      if (now - lastLine < everySeconds * 1000 && done !== steps) return;
      lastLine = now;
      const rate = (done - startStep) / ((now - startedAt) / 1000);
      const eta = rate > 0 ? (steps - done) / rate : 0;
      write(
        `${epochLabel} step ${done}/${steps} loss ${payload.loss} acc ${payload.acc} lr ${payload.lr} ETA ${eta.toFixed(0)} s`,
      );
    },
    endEpoch(r) {
      if (bar) bar.stop();
      bar = null;
      write(fmtEpoch(r));
    },
    stop() {
      if (bar) bar.stop();
      bar = null;
    },
  };
}
