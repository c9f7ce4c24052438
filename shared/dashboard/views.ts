import { html, raw } from 'hono/html';
import { formatBytes, formatCount, formatMs, formatSeconds } from '../cli/format.ts';
import { latencyChart } from './chart.ts';
import { describeGate } from '../registry/versions.ts';
import type { DashboardData, ModelAliases, RunView, StageView } from './data.ts';
import { modelBytes } from '../events/index.ts';

/**
 * Server-rendered HTML of the status page. Every value goes through hono's `html` template, which
 * escapes interpolated strings: checkpoint keys come from uploads and error messages quote them.
 */
export function page(data: DashboardData, refreshSeconds: number) {
  return html`<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Heimdall pipeline</title>
  <noscript><meta http-equiv="refresh" content="${refreshSeconds}"></noscript>
  <style>${raw(STYLE)}</style>
</head>
<body>
  <header><h1>Heimdall pipeline</h1><p>Checkpoints to verified, benchmarked, registered ONNX models. This page refreshes every ${refreshSeconds} s.</p></header>
  <main id="dashboard">${content(data)}</main>
  <script>
    // Re-renders the content in place rather than reloading: no flash, and the scroll position stays.
    const main = document.getElementById('dashboard');
    const refresh = async () => {
      try {
        const response = await fetch('fragment', { cache: 'no-store' });
        if (response.ok) main.innerHTML = await response.text();
      } catch {
        // The server may be restarting: the next round tries again.
      }
      setTimeout(refresh, ${refreshSeconds * 1000});
    };
    setTimeout(refresh, ${refreshSeconds * 1000});
  </script>
</body>
</html>`;
}

/** What the page refreshes: the summary, the aliases, the chart and the runs. */
export function content(data: DashboardData) {
  const { running, registered, failed } = data.counts;
  const total = running + registered + failed;
  return html`<p class="summary">
      <strong>${total}</strong> run${total === 1 ? '' : 's'}: <span class="registered">${registered} registered</span>,
      <span class="failed">${failed} failed</span>, <span class="running">${running} running</span>
      <span class="muted">· updated ${timestamp(data.generatedAt)}</span>
    </p>
    <section class="card">
      <h2>Aliases</h2>
      ${data.models.map(aliasesTable)}
    </section>
    <section class="card">
      <h2>Benchmark latency by registered version</h2>
      ${latencyChart(data.versions)}
    </section>
    <section class="card">
      <h2>Runs</h2>
      ${data.runs.length === 0 ? html`<p class="empty">No runs yet: start one with <code>heimdall run &lt;checkpoint&gt;</code>.</p>` : runsTable(data.runs)}
    </section>`;
}

/** Each alias's holder, then its moves newest first: what `heimdall promote` / `rollback` and the gate did. */
function aliasesTable(model: ModelAliases) {
  if (model.error) return html`<p class="registry-error" data-model="${model.name}">${model.name}: the registry cannot be read: ${model.error}</p>`;
  if (model.aliases.length === 0) return html`<p class="empty" data-model="${model.name}">${model.name}: no alias set yet.</p>`;
  return html`<table class="aliases" data-model="${model.name}">
    <thead><tr><th>Alias</th><th>Holder</th><th>Moves, newest first</th></tr></thead>
    <tbody>${model.aliases.map(
      (a) => html`<tr class="alias" data-model="${model.name}" data-alias="${a.alias}" data-holder="${a.holder ?? ''}">
        <td><code>${model.name}@${a.alias}</code></td>
        <td class="holder">${a.holder ? `v${a.holder}` : html`<span class="muted">unset</span>`}</td>
        <td><ol class="moves">${a.moves.map(
          (m) => html`<li class="move" data-version="${m.version}" data-reason="${m.reason}">${timestamp(m.at)} <strong>v${m.version}</strong>${m.previous ? html` <span class="muted">(was v${m.previous})</span>` : ''} ${m.reason} <span class="muted">by ${m.actor}</span></li>`,
        )}</ol></td>
      </tr>`,
    )}</tbody>
  </table>`;
}

function runsTable(runs: readonly RunView[]) {
  return html`<table class="runs">
    <thead><tr><th>Run</th><th>Status</th><th>Stages</th><th>Parity</th><th>Benchmark p50 [95% CI] / p99</th><th>Model</th><th>Updated</th></tr></thead>
    <tbody>${runs.map(runRows)}</tbody>
  </table>`;
}

function runRows(run: RunView) {
  const exported = run.export;
  return html`<tr class="run" data-run-id="${run.runId}" data-status="${run.status}">
      <td class="run">
        <code class="run-id">${run.runId}</code>
        ${run.checkpoint ? html`<div class="checkpoint">${run.checkpoint.key} <span class="muted">${formatBytes(run.checkpoint.size)}</span></div>` : ''}
        ${exported ? html`<div class="muted">${exported.architecture.variant}, ${formatCount(exported.architecture.params)} params, ONNX ${formatBytes(modelBytes(exported.onnx))} opset ${exported.onnx.opset}</div>` : ''}
      </td>
      <td><span class="badge ${run.status}">${run.status}</span></td>
      <td><ol class="timeline">${run.stages.map(stageChip)}</ol></td>
      <td class="parity">${parity(run)}</td>
      <td class="benchmark">${benchmark(run)}</td>
      <td>${model(run)}</td>
      <td class="updated">${timestamp(run.updatedAt)}${run.status === 'running' ? '' : html`<div class="muted">in ${formatSeconds(Date.parse(run.updatedAt) - Date.parse(run.createdAt))}</div>`}</td>
    </tr>
    ${
      run.error
        ? html`<tr class="failure" data-run-id="${run.runId}"><td colspan="7">
            Failed at <strong class="stage">${run.error.stage}</strong>: <strong class="code">${run.error.code}</strong> <span class="message">${run.error.message}</span>
          </td></tr>`
        : ''
    }`;
}

function stageChip(stage: StageView) {
  const duration = stage.durationMs === undefined ? '' : formatSeconds(stage.durationMs);
  const attempts = stage.attempts > 1 ? `, ${stage.attempts} attempts` : '';
  return html`<li class="stage ${stage.status}" data-stage="${stage.name}" data-status="${stage.status}" title="${stage.name}: ${stage.status}${attempts}">
    ${stage.name}<small>${duration}</small>
  </li>`;
}

function parity(run: RunView) {
  const p = run.parity;
  if (!p) return '';
  const worst = Math.max(...Object.values(p.perOutput).map((e) => e.maxAbs));
  return html`<div>max |diff| ${worst.toExponential(1)} ${p.passed ? '≤' : '>'} ${p.tolerance < 1e-3 ? p.tolerance.toExponential() : p.tolerance}</div>
    <div class="muted">${p.samples} ${p.reference} samples</div>`;
}

/** p50 with its interval and sample count; p99 only where the sample count gave one. */
function benchmark(run: RunView) {
  const b = run.benchmark;
  if (!b) return '';
  const baseline = b.baseline;
  const interval = ([low, high]: readonly [number, number]) => `${low.toFixed(2)}–${high.toFixed(2)}`;
  return html`${b.perBatch.map((s) => html`<div>b${s.batch} ${formatMs(s.p50)} <span class="muted">[${interval(s.p50Interval)}]</span> / ${s.p99 === undefined ? '–' : formatMs(s.p99)} <span class="muted">n=${s.n}</span></div>`)}
    <div class="muted">${b.provider}, ${b.threads} thread${b.threads === 1 ? '' : 's'}</div>
    ${baseline ? html`<div class="${baseline.regression ? 'regression' : 'muted'}">${baseline.ratio.toFixed(2)}x [${interval(baseline.ratioInterval)}] v${baseline.version}${baseline.regression ? ' regression' : ''}</div>` : ''}`;
}

/** The version, and whether the gate let it take the alias (and which check held it back). */
function model(run: RunView) {
  const r = run.registered;
  if (!r) return '';
  return html`<span class="model">${r.registry.name} v${r.registry.version}</span>
    <div class="${r.alias.moved || r.gate.passed ? 'muted' : 'regression'}" data-gate="${r.gate.passed ? 'passed' : 'failed'}">gate ${describeGate(r.gate)}${r.alias.moved ? `, took @${r.alias.name}` : r.gate.passed ? `, already @${r.alias.name}` : `, @${r.alias.name} held back`}</div>`;
}

/** UTC, to the second: the same for every viewer. */
function timestamp(iso: string) {
  return html`<time datetime="${iso}">${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC</time>`;
}

const STYLE = `
  :root { font-family: system-ui, 'Liberation Sans', sans-serif; color: #0f172a; background: #f8fafc; }
  body { margin: 0 auto; padding: 1rem 1.5rem 3rem; max-width: 1280px; }
  header h1 { margin: 0.5rem 0 0; font-size: 1.5rem; }
  header p, .muted { color: #64748b; }
  .muted { font-size: 0.85em; }
  .card { background: #fff; border: 1px solid #e2e8f0; border-radius: 8px; padding: 0.5rem 1rem 1rem; margin: 1rem 0; overflow-x: auto; }
  h2 { font-size: 1.05rem; }
  .summary .registered { color: #15803d; } .summary .failed { color: #b91c1c; } .summary .running { color: #1d4ed8; }
  table.runs { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
  table.runs th { text-align: left; color: #475569; font-weight: 600; border-bottom: 2px solid #e2e8f0; padding: 0.4rem; }
  table.runs td { vertical-align: top; padding: 0.5rem 0.4rem; border-bottom: 1px solid #e2e8f0; }
  tr.run:has(+ tr.failure) td { border-bottom: none; }
  .checkpoint { word-break: break-all; }
  td.benchmark { white-space: nowrap; }
  td.run { min-width: 11rem; } td.parity { min-width: 9rem; }
  .badge { display: inline-block; padding: 0.1rem 0.5rem; border-radius: 999px; font-size: 0.8rem; font-weight: 600; }
  .badge.registered { background: #dcfce7; color: #166534; } .badge.failed { background: #fee2e2; color: #991b1b; } .badge.running { background: #dbeafe; color: #1e40af; }
  /* Two rows of three: the pipeline reads left to right, then on; a single row would crowd the figures. */
  ol.timeline { display: grid; grid-template-columns: repeat(3, auto); gap: 2px; list-style: none; margin: 0; padding: 0; }
  .timeline .stage { display: flex; flex-direction: column; align-items: center; min-width: 3.9rem; padding: 0.2rem 0.2rem; font-size: 0.7rem; border-radius: 4px; background: #f1f5f9; color: #94a3b8; }
  .timeline .stage small { font-size: 0.68rem; min-height: 1em; }
  .timeline .done { background: #dcfce7; color: #166534; } .timeline .failed { background: #fecaca; color: #991b1b; font-weight: 600; }
  .timeline .running { background: #dbeafe; color: #1e40af; animation: pulse 1.2s ease-in-out infinite; }
  @keyframes pulse { 50% { opacity: 0.55; } }
  tr.failure td { background: #fef2f2; color: #7f1d1d; padding-top: 0.2rem; }
  .regression { color: #b91c1c; font-weight: 600; }
  .empty { color: #64748b; font-style: italic; }
  table.aliases { border-collapse: collapse; font-size: 0.9rem; margin-bottom: 0.5rem; }
  table.aliases th { text-align: left; color: #475569; font-weight: 600; border-bottom: 2px solid #e2e8f0; padding: 0.3rem 0.6rem 0.3rem 0; }
  table.aliases td { vertical-align: top; padding: 0.4rem 0.6rem 0.4rem 0; border-bottom: 1px solid #e2e8f0; }
  ol.moves { margin: 0; padding: 0; list-style: none; } .registry-error { color: #b91c1c; }
  svg.chart { max-width: 100%; height: auto; font-size: 12px; }
  svg.chart .grid { stroke: #e2e8f0; } svg.chart .tick, svg.chart .version, svg.chart .axis, svg.chart .legend text { fill: #475569; }
`;
