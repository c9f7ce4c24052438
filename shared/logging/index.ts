import { pino, type Logger } from 'pino';

export type { Logger };

/** JSON logs on stderr (stdout stays for command output and reports); credentials are redacted. */
export function createLogger(level: string, name = 'heimdall'): Logger {
  return pino(
    {
      name,
      level,
      redact: { paths: ['*.password', '*.secretKey', '*.token', '*.authorization', 'config.s3.secretKey'], censor: '[redacted]' },
    },
    pino.destination(2),
  );
}
