import { writeFileSync } from 'node:fs';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

/** Renders a Vega-Lite spec to an SVG file (no browser, no canvas). */
export async function writeSvg(path: string, spec: TopLevelSpec): Promise<void> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  writeFileSync(path, await view.toSVG());
  view.finalize();
}

export function acceptanceChart(title: string, rows: { method: string; position: number; rate: number }[]): TopLevelSpec {
  return {
    title,
    width: 420,
    height: 240,
    data: { values: rows },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'position', type: 'ordinal', title: 'draft position (1 = first drafted token)' },
      y: { field: 'rate', type: 'quantitative', title: 'acceptance rate at the target', scale: { domain: [0, 1] } },
      color: { field: 'method', type: 'nominal' },
    },
  };
}

export function speedupChart(title: string, rows: { workload: string; method: string; speedup: number }[]): TopLevelSpec {
  return {
    title,
    data: { values: rows },
    mark: 'bar',
    encoding: {
      column: { field: 'workload', type: 'nominal' },
      x: { field: 'method', type: 'nominal', title: null },
      y: { field: 'speedup', type: 'quantitative', title: 'tokens/s relative to ar' },
      color: { field: 'method', type: 'nominal', legend: null },
    },
  };
}
