import { formatBytes, formatSeconds } from './format.ts';

/**
 * One self-updating status line on a terminal (stderr), silent when stderr is not a TTY so logs and
 * pipes stay clean. Redraws at most every 100 ms.
 */
export class ProgressLine {
  private readonly enabled: boolean;
  private lastDraw = 0;
  private drawn = false;
  private readonly started = performance.now();

  constructor(
    private readonly label: string,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {
    this.enabled = Boolean(stream.isTTY);
  }

  bytes(phase: string, done: number, total: number): void {
    const percent = total > 0 ? Math.floor((100 * done) / total) : 100;
    this.update(`${phase} ${formatBytes(done)} / ${formatBytes(total)} (${percent}%)`, done >= total);
  }

  update(text: string, force = false): void {
    if (!this.enabled) return;
    const now = performance.now();
    if (!force && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const line = `${this.label}  ${text}  ${formatSeconds(now - this.started)}`;
    this.stream.write(`\r\x1b[2K${line.slice(0, (this.stream.columns ?? 120) - 1)}`);
    this.drawn = true;
  }

  /** Clears the line so the next output starts clean. */
  done(): void {
    if (this.drawn) this.stream.write('\r\x1b[2K');
    this.drawn = false;
  }
}
