// Overview: per target module, the counts of GET /system/events/stats, each a link to the
// list it counts, and the chart of handler outcomes per minute (?series=minute).

import { ApiError, api } from "./api.js";
import { outcomesChart } from "./chart.js";
import { h, replace } from "./dom.js";
import { age, count } from "./format.js";
import { heading } from "./parts.js";

// Counts and the list each links to: "retry scheduled" and "gave up" are the failed events
// with and without an automatic retry to come (the list's retry_scheduled filter).
const COLUMNS = [
  ["pending", "Pending", { status: "pending" }],
  ["processed", "Processed", { status: "processed" }],
  ["failed", "Failed", { status: "failed" }],
  ["retry_scheduled", "Retry scheduled", { status: "failed", retry_scheduled: "true" }],
  ["gave_up", "Gave up", { status: "failed", retry_scheduled: "false" }],
];

let seriesServed = true; // until the API says it does not know ?series

export function mount(ctx) {
  const table = h("div", { class: "results" }, h("p", { class: "summary" }, "Loading…"));
  const chart = h("div", { class: "chart-region" });
  const generated = h("p", { class: "muted" });
  ctx.main.append(
    heading("Overview"),
    generated,
    section("modules-title", "By target module", table),
    section("chart-title", "Last hour", chart),
  );

  return {
    async refresh(signal) {
      const stats = await read(ctx.scope(), signal);
      const at = stats.generated_at.slice(11, 19);
      generated.textContent = `Counted at ${at} UTC in ${ctx.tenantLabel()}.`;
      replace(table, modulesTable(ctx, stats));
      replace(chart, outcomesChart(stats.series, stats.generated_at));
    },
  };
}

function section(id, title, content) {
  return h("section", { "aria-labelledby": id }, h("h2", { id }, title), content);
}

async function read(scope, signal) {
  if (seriesServed) {
    try {
      return await api.stats({ ...scope, series: "minute" }, signal);
    } catch (error) {
      const unknown = error instanceof ApiError && error.message === "Unknown query parameter";
      if (!unknown) throw error;
      seriesServed = false; // an API without the series: the chart says so
    }
  }
  return api.stats(scope, signal);
}

function link(ctx, value, filters, key, label) {
  return h(
    "a",
    { href: ctx.href("events", filters), "data-key": key, "aria-label": label },
    count(value),
  );
}

function row(ctx, module, counts, isTotal) {
  const name = isTotal ? "All modules" : module;
  const gaveUp = Math.max(0, counts.failed - counts.retry_scheduled);
  const values = { ...counts, gave_up: gaveUp };
  const moduleFilter = isTotal ? {} : { target_module: module };
  return h(
    "tr",
    { class: isTotal ? "total" : null, "data-module": isTotal ? "" : module },
    h("th", { scope: "row" }, name),
    COLUMNS.map(([key, label, filters]) =>
      h(
        "td",
        { class: "num", "data-count": key },
        link(
          ctx,
          values[key],
          { ...moduleFilter, ...filters },
          `${name}-${key}`,
          `${label} in ${name}: ${values[key]}`,
        ),
      ),
    ),
    h("td", { class: "num", "data-count": "oldest" }, age(counts.oldest_pending_age_seconds)),
    h(
      "td",
      { class: "num", "data-count": "total" },
      link(
        ctx,
        counts.total,
        moduleFilter,
        `${name}-total`,
        `All events in ${name}: ${counts.total}`,
      ),
    ),
  );
}

function modulesTable(ctx, stats) {
  if (!stats.modules.length) return h("p", { class: "empty" }, "No event yet.");
  const totals = { ...stats.totals, oldest_pending_age_seconds: stats.oldest_pending_age_seconds };
  return h(
    "div",
    {
      class: "table-wrap",
      tabindex: "0",
      role: "region",
      "aria-label": "Counts by target module",
      "data-key": "stats-table",
    },
    h(
      "table",
      { class: "stats" },
      h("caption", { class: "visually-hidden" }, "Events by target module and status"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Target module"),
          COLUMNS.map(([, label]) => h("th", { scope: "col", class: "num" }, label)),
          h("th", { scope: "col", class: "num" }, "Oldest pending"),
          h("th", { scope: "col", class: "num" }, "Total"),
        ),
      ),
      h(
        "tbody",
        {},
        stats.modules.map((m) => row(ctx, m.target_module, m, false)),
        row(ctx, "", totals, true),
      ),
    ),
  );
}
