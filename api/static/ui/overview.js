// Overview: per target module, the counts of GET /system/events/stats, each a link to the
// list it counts, and the chart of handler outcomes per minute (?series=minute); the keys held
// by a failed ordered event (GET /system/held-keys), each with a Release button; the paused
// modules (GET /system/modules), with Pause and Resume for a system admin.

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
  const held = h("div", { class: "results" });
  const delivery = h("div", { class: "results" });
  ctx.main.append(
    heading("Overview"),
    generated,
    section("modules-title", "By target module", table),
    section("chart-title", "Last hour", chart),
    section("held-title", "Held keys", held),
    section("delivery-title", "Delivery", delivery),
  );

  return {
    async refresh(signal) {
      const scope = ctx.scope();
      const [stats, keys, modules] = await Promise.all([
        read(scope, signal),
        api.heldKeys(scope, signal),
        api.modules(signal),
      ]);
      const at = stats.generated_at.slice(11, 19);
      generated.textContent = `Counted at ${at} UTC in ${ctx.tenantLabel()}.`;
      replace(table, modulesTable(ctx, stats));
      replace(chart, outcomesChart(stats.series, stats.generated_at));
      replace(held, heldTable(ctx, keys.held_keys));
      replace(delivery, deliveryTable(ctx, modules.modules));
    },
  };
}

async function act(ctx, { title, text, action, call }) {
  if (!(await ctx.confirm({ title, text, action }))) return;
  try {
    const answer = await call();
    ctx.notice(answer.message);
    ctx.refreshNow();
  } catch (error) {
    ctx.fail(error);
  }
}

function heldTable(ctx, keys) {
  if (!keys.length) return h("p", { class: "empty" }, "No key is held.");
  const head = ["Module", "Entity", "Failed event", "Held for", "Waiting", ""];
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Held keys" },
    h(
      "table",
      { class: "held", "data-key": "held-table" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
      h(
        "tbody",
        {},
        keys.map((k) =>
          h(
            "tr",
            { "data-held": k.event_id },
            h("td", {}, k.target_module),
            h("td", {}, `${k.entity_type} ${k.entity_id}`),
            h("td", {}, h("a", { href: ctx.href("event", { id: k.event_id }) }, k.event_type)),
            h("td", { class: "num" }, age(k.age_seconds)),
            h("td", { class: "num" }, count(k.waiting)),
            h(
              "td",
              {},
              h(
                "button",
                {
                  type: "button",
                  "data-release": k.event_id,
                  onclick: () =>
                    act(ctx, {
                      title: "Release this key?",
                      text:
                        `The ${count(k.waiting)} events of ${k.entity_type} ${k.entity_id} ` +
                        "waiting behind the failed one will run; it stays failed.",
                      action: "Release",
                      call: () => api.release(k.event_id, ctx.scope()),
                    }),
                },
                "Release",
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

function deliveryTable(ctx, modules) {
  if (!modules.length) return h("p", { class: "empty" }, "No module has events in flight.");
  const admin = ctx.identity.isAdmin;
  return h(
    "ul",
    { class: "delivery", "data-key": "delivery" },
    modules.map((m) =>
      h(
        "li",
        { "data-module": m.target_module },
        h("strong", {}, m.target_module),
        m.paused ? ` paused since ${m.paused_at.slice(0, 19)} UTC` : " delivering",
        m.paused && m.reason ? ` (${m.reason})` : "",
        admin
          ? h(
              "button",
              {
                type: "button",
                "data-toggle": m.target_module,
                onclick: () =>
                  act(ctx, {
                    title: m.paused ? `Resume ${m.target_module}?` : `Pause ${m.target_module}?`,
                    text: m.paused
                      ? "Its waiting events are delivered again."
                      : "Its events wait (every tenant's) until it is resumed; none is lost.",
                    action: m.paused ? "Resume" : "Pause",
                    call: () => (m.paused ? api.resume : api.pause)(m.target_module),
                  }),
              },
              m.paused ? "Resume" : "Pause",
            )
          : "",
      ),
    ),
  );
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
