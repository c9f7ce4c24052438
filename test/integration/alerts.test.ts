/**
 * Alerts from `heimdall run`, as a user configures them: HEIMDALL_ALERT_WEBHOOKS pointing at a real
 * HTTP server standing in for Slack, and a hostile checkpoint that makes the run fail.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { heimdallRun } from '../support/heimdall-cli.ts';
import { writeHostileCheckpoint } from '../support/hostile-checkpoint.ts';
import { tempDir } from '../support/temp.ts';
import { startWebhookReceiver } from '../support/webhook-receiver.ts';

let dir: string;
let hostile: string;
beforeAll(async () => {
  dir = await tempDir('heimdall-alerts-');
  hostile = await writeHostileCheckpoint(dir);
});

describe('heimdall run with HEIMDALL_ALERT_WEBHOOKS', () => {
  it('sends one alert naming the run, the stage and the error code when a run fails', async () => {
    const webhook = await startWebhookReceiver();
    try {
      const { code, report } = await heimdallRun(hostile, join(dir, 'failed'), { HEIMDALL_ALERT_WEBHOOKS: `${webhook.url}/hooks/heimdall` });
      expect(code).toBe(1);
      expect(report.error).toMatchObject({ stage: 'export', code: 'UNSAFE_PICKLE' });
      // The run waited for the delivery before exiting: the alert is there already.
      expect(webhook.requests).toHaveLength(1);
      expect(webhook.requests[0]).toMatchObject({ path: '/hooks/heimdall', contentType: 'application/json' });
      expect(webhook.accepted()).toEqual([`Heimdall run ${report.runId} failed at export: UNSAFE_PICKLE: ${report.error!.message}`]);
    } finally {
      await webhook.close();
    }
  });

  it('retries a webhook that answers 500 twice, and the third try gets the alert', async () => {
    const webhook = await startWebhookReceiver([500, 500]);
    try {
      const { code, report } = await heimdallRun(hostile, join(dir, 'retried'), { HEIMDALL_ALERT_WEBHOOKS: webhook.url, HEIMDALL_ALERT_BACKOFF_MS: '50' });
      expect(code).toBe(1);
      expect(webhook.requests.map((r) => r.answer)).toEqual([500, 500, 200]);
      expect(webhook.accepted()).toEqual([expect.stringMatching(new RegExp(`^Heimdall run ${report.runId} failed at export: UNSAFE_PICKLE: `))]);
    } finally {
      await webhook.close();
    }
  });

  it('stops at start-up on a bad alert setting, naming the variable', async () => {
    const { code, stderr } = await heimdallRun(hostile, join(dir, 'misconfigured'), { HEIMDALL_ALERT_WEBHOOKS: 'hooks.slack.com/services/x' });
    expect(code).toBe(2);
    expect(stderr).toMatch(/^error: USAGE: invalid configuration: HEIMDALL_ALERT_WEBHOOKS: must be http\(s\) URLs separated by commas$/m);
  });
});
