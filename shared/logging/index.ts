import { pino, type Logger } from 'pino';

export type { Logger };

/** JSON logs on stderr (stdout stays for command output and reports); credentials are redacted. */
export function createLogger(level: string, name = 'heimdall'): Logger {
  return pino(
    {
      name,
      level,
      // One and two levels deep: a logged object, or a config section inside one (config.mlflow.password).
      redact: { paths: ['*.password', '*.secretKey', '*.token', '*.authorization', '*.*.password', '*.*.secretKey', '*.*.token', '*.*.authorization'], censor: '[redacted]' },
    },
    pino.destination(2),
  );
}
