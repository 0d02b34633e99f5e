// Handler outcomes per minute over the last hour, drawn as inline SVG with DOM calls: stacked
// bars (processed, failed, lost) for the 60 minutes that end with the current one.

import { h, s } from "./dom.js";
import { count, minute } from "./format.js";

const MINUTES = 60;
const WIDTH = 960;
const HEIGHT = 220;
const LEFT = 44;
const RIGHT = 8;
const TOP = 10;
const BOTTOM = 26;
const OUTCOMES = ["processed", "failed", "lost"];

function niceMax(value) {
  if (value <= 4) return 4;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

/** The series summed over modules, one entry per minute of the hour (zeros where sparse). */
export function buckets(series, endIso) {
  const end = new Date(endIso || Date.now());
  end.setUTCSeconds(0, 0);
  const first = end.getTime() - (MINUTES - 1) * 60000;
  const rows = Array.from({ length: MINUTES }, (_, i) => ({
    at: new Date(first + i * 60000),
    processed: 0,
    failed: 0,
    lost: 0,
  }));
  for (const point of series) {
    const index = Math.round((new Date(point.minute).getTime() - first) / 60000);
    if (index < 0 || index >= MINUTES) continue;
    for (const name of OUTCOMES) rows[index][name] += Number(point[name]) || 0;
  }
  return rows;
}

/** The chart's figure: an SVG, its legend, and a one-line summary for screen readers. */
export function outcomesChart(series, endIso) {
  const caption = h("figcaption", {}, "Handler outcomes per minute, last hour (UTC)");
  if (!Array.isArray(series)) {
    return h(
      "figure",
      { class: "chart", "data-chart": "none" },
      caption,
      h("p", { class: "empty" }, "No data: this API serves no per-minute series."),
    );
  }
  const rows = buckets(series, endIso);
  const totals = Object.fromEntries(
    OUTCOMES.map((name) => [name, rows.reduce((sum, r) => sum + r[name], 0)]),
  );
  if (totals.processed + totals.failed + totals.lost === 0) {
    return h(
      "figure",
      { class: "chart", "data-chart": "empty" },
      caption,
      h("p", { class: "empty" }, "No data: no handler finished in the last hour."),
    );
  }
  const top = niceMax(Math.max(...rows.map((r) => r.processed + r.failed + r.lost)));
  const plotW = WIDTH - LEFT - RIGHT;
  const plotH = HEIGHT - TOP - BOTTOM;
  const slot = plotW / MINUTES;
  const y = (v) => TOP + plotH - (v / top) * plotH;
  const summary =
    `Last hour: ${count(totals.processed)} processed, ${count(totals.failed)} failed, ` +
    `${count(totals.lost)} lost.`;

  const grid = [0, top / 2, top].map((v) =>
    s(
      "g",
      { class: "grid" },
      s("line", { x1: LEFT, x2: WIDTH - RIGHT, y1: y(v), y2: y(v) }),
      s("text", { x: LEFT - 6, y: y(v) + 4, "text-anchor": "end" }, count(v)),
    ),
  );
  const ticks = [0, 15, 30, 45, MINUTES - 1].map((i) =>
    s(
      "text",
      {
        class: "tick",
        x: i === MINUTES - 1 ? WIDTH - RIGHT : LEFT + i * slot + slot / 2,
        y: HEIGHT - 8,
        "text-anchor": i === 0 ? "start" : i === MINUTES - 1 ? "end" : "middle",
      },
      minute(rows[i].at),
    ),
  );
  const bars = rows.map((row, i) => {
    let base = 0;
    const rects = [];
    for (const name of OUTCOMES) {
      if (!row[name]) continue;
      rects.push(
        s("rect", {
          class: `bar bar-${name}`,
          x: (LEFT + i * slot + slot * 0.15).toFixed(2),
          width: (slot * 0.7).toFixed(2),
          y: y(base + row[name]).toFixed(2),
          height: Math.max(1, y(base) - y(base + row[name])).toFixed(2),
        }),
      );
      base += row[name];
    }
    if (!rects.length) return null;
    const label =
      `${minute(row.at)}: ${row.processed} processed, ${row.failed} failed, ` +
      `${row.lost} lost`;
    return s("g", { "data-minute": row.at.toISOString() }, s("title", {}, label), rects);
  });
  const svg = s(
    "svg",
    {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: "img",
      "aria-label": summary,
    },
    grid,
    ticks,
    bars,
  );
  const legend = h(
    "ul",
    { class: "legend" },
    OUTCOMES.map((name) =>
      h("li", {}, h("span", { class: `swatch bar-${name}` }), `${name} ${count(totals[name])}`),
    ),
  );
  return h(
    "figure",
    { class: "chart", "data-chart": "bars" },
    caption,
    h("div", { class: "chart-scroll" }, svg),
    legend,
  );
}
