import { userInfo } from 'node:os';
import { closeNats, connectNats, withoutCredentials } from '../../bus/nats/connection.ts';
import { NatsEventBus } from '../../bus/nats/event-bus.ts';
import { provisionStreams } from '../../bus/nats/provision.ts';
import { loadConfig, type Config } from '../../config/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import type { CloudEvent } from '../../events/index.ts';
import type { PromotionReason } from '../../events/schemas.ts';
import { promote, rollbackTarget } from '../../gate/promotion.ts';
import { createLogger, type Logger } from '../../logging/index.ts';
import { createAdapters } from '../../pipeline/adapters.ts';
import { openRunState } from '../../pipeline/run-state/open.ts';
import { recordEvent } from '../../pipeline/run-state/run-state.ts';
import type { ModelRegistry } from '../../registry/model-registry.ts';
import { parseCommandArgs } from '../args.ts';
import type { CliEnvironment } from '../main.ts';

const DEFAULTS = '(alias default: HEIMDALL_MODEL_ALIAS, else staging; name default: HEIMDALL_MODEL_NAME)';
export const promoteUsage = `heimdall promote <version> [--alias A] [--name N]   ${DEFAULTS}`;
export const rollbackUsage = `heimdall rollback [--alias A] [--name N]   ${DEFAULTS}`;

const OPTIONS = { alias: { type: 'string' }, name: { type: 'string' } } as const;

/** Points an alias at a version by hand (reason `manual`). */
export async function promoteCommand(argv: string[], env: CliEnvironment): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, promoteUsage, OPTIONS);
  const [version] = positionals;
  if (!version || positionals.length > 1) throw new HeimdallError(ErrorCodes.USAGE, `usage: ${promoteUsage}`);
  if (!/^[1-9]\d*$/.test(version)) throw new HeimdallError(ErrorCodes.USAGE, `a version is a number like 3, got ${version}\nusage: ${promoteUsage}`);
  return moveAlias(env, values, 'manual', async () => version);
}

/** Returns an alias to the version that held it before its current holder (reason `rollback`). */
export async function rollbackCommand(argv: string[], env: CliEnvironment): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, rollbackUsage, OPTIONS);
  if (positionals.length > 0) throw new HeimdallError(ErrorCodes.USAGE, `usage: ${rollbackUsage}`);
  return moveAlias(env, values, 'rollback', async (registry, name, alias) => rollbackTarget(name, alias, (await registry.aliasHistory(name))[alias] ?? []));
}

/**
 * The move both commands make: through `promote()` (the one way aliases move), then `model.promoted`
 * on NATS when configured. NATS is reached before the alias moves, so an unreachable server
 * changes nothing rather than leaving a move nobody was told about.
 */
async function moveAlias(
  env: CliEnvironment,
  options: { alias?: string; name?: string },
  reason: PromotionReason,
  target: (registry: ModelRegistry, name: string, alias: string) => Promise<string>,
): Promise<number> {
  const config = loadConfig();
  const logger = createLogger(config.logLevel);
  const name = options.name ?? config.modelName;
  const alias = options.alias ?? config.alias;
  const { registry } = await createAdapters(config);
  const publisher = config.nats ? await natsPublisher(config.nats.url, logger) : undefined;
  try {
    const version = await target(registry, name, alias);
    const { previous, event } = await promote(registry, { name, alias, version, reason, actor: cliActor() });
    if (!event) {
      env.io.stdout(`${name}@${alias} already names v${version}: nothing changed`);
      return 0;
    }
    env.io.stdout(`${name}@${alias}: ${previous ? `v${previous}` : 'unset'} -> v${version} (${reason})`);
    await publisher?.publish(event);
    await recordOnRun(event, config, logger);
    return 0;
  } finally {
    await publisher?.close();
  }
}

/**
 * The move on its run's record, as the workers record what they publish (`status`, `watch` and the
 * status page read it there). The registry already holds the move: a record that cannot be written
 * is a warning, not a failed command.
 */
async function recordOnRun(event: CloudEvent<'heimdall.model.promoted'>, config: Config, logger: Logger): Promise<void> {
  try {
    const { runState, close } = await openRunState(config, logger);
    try {
      await recordEvent(runState, event);
    } finally {
      await close();
    }
  } catch (error) {
    logger.warn({ err: error, event: event.id }, 'the alias moved; its run record was not updated');
  }
}

/** The OS user running the command; `heimdall/cli` where there is none (a container without a passwd entry). */
function cliActor(): string {
  let username = '';
  try {
    username = userInfo().username;
  } catch {
    // No passwd entry for this uid: $USER, if anything.
  }
  return username || process.env.USER || 'heimdall/cli';
}

/**
 * A JetStream publisher for one event. The streams are provisioned as workers do, so the event is
 * kept even when no worker has started yet; a person's command fails at once when no server answers.
 */
async function natsPublisher(url: string, logger: Logger) {
  const nc = await connectNats(url, `heimdall-cli-${process.pid}`, logger, { waitForServer: false });
  const bus = new NatsEventBus(nc, logger);
  try {
    await provisionStreams(nc);
  } catch (error) {
    await closeNats(nc, logger);
    throw new HeimdallError(ErrorCodes.IO_ERROR, `cannot set up the event streams on NATS at ${withoutCredentials(url)}: ${(error as Error).message}`, { cause: error });
  }
  return {
    async publish(event: CloudEvent<'heimdall.model.promoted'>) {
      await bus.publish(event).catch((error: Error) => {
        throw new HeimdallError(ErrorCodes.IO_ERROR, `the alias moved, but model.promoted was not published on ${withoutCredentials(url)}: ${error.message}`, { cause: error });
      });
    },
    async close() {
      await bus.close();
      await closeNats(nc, logger);
    },
  };
}
