import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import { fromMessage, toBinary, type AnyCloudEvent } from '../../events/index.ts';

/** CloudEvents binary mode on NATS headers (the same ce-* naming as HTTP); structured mode accepted. */
export function encodeEvent(event: AnyCloudEvent): { headers: MsgHdrs; body: string } {
  const { headers, body } = toBinary(event);
  const h = natsHeaders();
  for (const [name, value] of Object.entries(headers)) h.set(name, value);
  return { headers: h, body };
}

export function decodeEvent(headers: MsgHdrs | undefined, body: string): AnyCloudEvent {
  const pairs: Array<[string, string]> = [];
  for (const name of headers?.keys() ?? []) pairs.push([name, headers!.get(name)]);
  return fromMessage(pairs, body);
}
