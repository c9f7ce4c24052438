/**
 * RFC 3339 `date-time` (§5.6), CloudEvents' type for `time`: `T` or `t` between date and time, `Z`,
 * `z` or a numeric offset (`-00:00` too), fractional seconds of any length, a leap second (`:60`).
 */
const DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2}):(\d{2}))$/;

/**
 * The instant in the one form Heimdall writes every time (`Date.toISOString()`: UTC, `Z`,
 * milliseconds), or undefined when it is no RFC 3339 date-time. One form whoever sent the event, so
 * times compare and sort as strings and an event published again is the same event. Digits past the
 * millisecond are dropped (truncated); a leap second becomes the first instant of the next minute (a
 * Date has none); an instant outside years 0000-9999 (reachable through an offset) is refused, since
 * it has no RFC 3339 form to be written in.
 */
export function normaliseTime(value: string): string | undefined {
  const match = DATE_TIME.exec(value);
  if (!match) return undefined;
  const [year, month, day, hour, minute, second] = match.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const [sign, offsetHours, offsetMinutes] = [match[8], Number(match[9] ?? 0), Number(match[10] ?? 0)];
  if (month < 1 || month > 12 || day < 1 || day > daysIn(year, month) || hour > 23 || minute > 59 || second > 60 || offsetHours > 23 || offsetMinutes > 59) return undefined;
  const milliseconds = Number((match[7] ?? '').slice(0, 3).padEnd(3, '0'));
  const date = new Date(0);
  // setUTCFullYear, not Date.UTC: Date.UTC reads years 0-99 as 1900-1999.
  date.setUTCFullYear(year, month - 1, day);
  date.setUTCHours(hour, minute, second, milliseconds);
  const offset = (sign === '-' ? -1 : 1) * (offsetHours * 60 + offsetMinutes);
  const instant = new Date(date.getTime() - offset * 60_000);
  const utcYear = instant.getUTCFullYear();
  return utcYear >= 0 && utcYear <= 9999 ? instant.toISOString() : undefined;
}

function daysIn(year: number, month: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return [4, 6, 9, 11].includes(month) ? 30 : 31;
}
