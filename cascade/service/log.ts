/**
 * pino loggers for the services: one factory so every tier logs the same shape (`service`
 * binding, ISO time, level names) and redacts the same secrets: authorization headers,
 * passwords, tokens, keys, wherever they appear up to two levels deep.
 */
import { type DestinationStream, type LevelWithSilent, type Logger, pino } from 'pino';

/** Log levels a config may name. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Keys whose values never reach a log line. */
const SECRET_KEYS = ['authorization', 'password', 'token', 'cloudToken', 'secret', 'apiKey', 'key', 'cookie'];

/** pino redaction paths: each secret key at the top level and one or two levels down. */
export const REDACT_PATHS: readonly string[] = SECRET_KEYS.flatMap((k) => [
  k,
  `*.${k}`,
  `*.*.${k}`,
  `req.headers.${k}`,
  `headers["${k}"]`,
]);

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  service: string;
  /** Default 'info'. */
  level?: LogLevel;
  /** Where lines go; default stdout (fd 1). Tests pass a stream to read them back. */
  destination?: DestinationStream;
}

/** Creates a service logger with secrets redacted. */
export function createLogger(opts: LoggerOptions): Logger {
  return pino(
    {
      level: (opts.level ?? 'info') as LevelWithSilent,
      base: { service: opts.service, pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: [...REDACT_PATHS], censor: '[redacted]' },
    },
    opts.destination ?? pino.destination({ fd: 1, sync: false }),
  );
}

export type { Logger };
