// Event detail: every field of GET /system/events/{id}, its data pretty-printed, the attempts
// timeline, the error, its deliveries to webhook endpoints; Retry sets it pending
// (PUT … {"status": "pending"}) once confirmed.

import { api } from "./api.js";
import { h, replace } from "./dom.js";
import { duration } from "./format.js";
import { heading, outcomeBadge, statusBadge, time } from "./parts.js";

const FIELDS = [
  ["id", "Id"],
  ["tenant_id", "Tenant"],
  ["event_type", "Event type"],
  ["source_module", "Source module"],
  ["target_module", "Target module"],
  ["entity_type", "Entity type"],
  ["entity_id", "Entity id"],
  ["status", "Status"],
  ["retry_count", "Retry count"],
  ["created_at", "Created"],
  ["processed_at", "Processed"],
  ["next_attempt_at", "Next attempt"],
];
const TIMES = new Set(["created_at", "processed_at", "next_attempt_at"]);
const SHOWN_APART = new Set(["event_data", "error_message"]);

export function mount(ctx) {
  const id = ctx.params.get("id") || "";
  const retry = h("button", { type: "button", class: "primary", "data-key": "retry" }, "Retry…");
  const content = h("div", { class: "detail" }, h("p", { class: "summary" }, "Loading…"));
  ctx.main.append(
    heading("Event"),
    h(
      "p",
      { class: "view-links" },
      h("a", { href: ctx.href("events", ctx.lastList()) }, "← Events"),
      " ",
      retry,
    ),
    content,
  );
  let current = null;
  let last = null;

  retry.addEventListener("click", async () => {
    if (!current) return;
    const yes = await ctx.confirm({
      title: "Retry this event?",
      text:
        `Event ${current.id} is set pending and sent to ${current.target_module} again: ` +
        "its handler runs once more.",
      action: "Retry",
    });
    if (!yes) return;
    retry.disabled = true;
    try {
      const answer = await api.setStatus(current.id, ctx.scope(), { status: "pending" });
      const { status, target_module: module } = answer.event;
      ctx.notice(`Event set ${status} and sent to ${module} again.`);
      ctx.refreshNow();
    } catch (error) {
      ctx.fail(error);
    } finally {
      retry.disabled = false;
    }
  });

  return {
    async refresh(signal) {
      const answer = await api.event(id, ctx.scope(), signal);
      const text = JSON.stringify(answer);
      if (text === last) return;
      last = text;
      // next_attempt_at sits beside the seed's event object, not in it
      current = { ...answer.event, next_attempt_at: answer.next_attempt_at };
      replace(
        content,
        render(ctx, current, answer.attempts, answer.attempts_total, answer.deliveries),
      );
    },
  };
}

function value(name, event) {
  const v = event[name];
  if (name === "status") return statusBadge(event);
  if (TIMES.has(name)) return time(v);
  if (v === null || v === undefined) return "—";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

function render(ctx, event, attempts, total = attempts.length, deliveries = []) {
  const known = new Set([...FIELDS.map(([n]) => n), ...SHOWN_APART]);
  // A field the API adds later is shown too: "every field".
  const more = Object.keys(event)
    .filter((n) => !known.has(n))
    .map((n) => [n, n.replace(/_/g, " ")]);
  const fields = h(
    "dl",
    { class: "fields" },
    [...FIELDS, ...more].map(([name, label]) => [
      h("dt", {}, label),
      h(
        "dd",
        { class: name.endsWith("id") ? "mono" : null, "data-field": name },
        value(name, event),
      ),
    ]),
  );
  const error = event.error_message
    ? h(
        "section",
        { "aria-labelledby": "error-title" },
        h("h2", { id: "error-title" }, "Error"),
        h("pre", { class: "error-text", "data-field": "error_message" }, event.error_message),
      )
    : null;
  return [
    fields,
    error,
    h(
      "section",
      { "aria-labelledby": "data-title" },
      h("h2", { id: "data-title" }, "Event data"),
      h(
        "pre",
        { class: "data", "data-field": "event_data" },
        JSON.stringify(event.event_data, null, 2),
      ),
    ),
    h(
      "section",
      { "aria-labelledby": "attempts-title" },
      h("h2", { id: "attempts-title" }, `Attempts (${total})`),
      // A long history comes cut to its last entries (attempts_total counts them all)
      total > attempts.length
        ? h("p", { class: "summary" }, `The last ${attempts.length} are shown.`)
        : null,
      timeline(attempts),
    ),
    h(
      "section",
      { "aria-labelledby": "deliveries-title" },
      h("h2", { id: "deliveries-title" }, `Deliveries (${deliveries.length})`),
      deliveriesTable(ctx, deliveries),
    ),
  ];
}

/** Its outcome with each webhook endpoint it went to. */
function deliveriesTable(ctx, deliveries) {
  if (!deliveries.length) {
    return h("p", { class: "empty", "data-field": "deliveries" }, "None yet.");
  }
  const head = [
    "Endpoint",
    "Status",
    "Requests",
    "Last status code",
    "Last error",
    "Last attempt",
    "Acknowledged",
  ];
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Deliveries" },
    h(
      "table",
      { class: "deliveries", "data-field": "deliveries" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
      h(
        "tbody",
        {},
        deliveries.map((d) =>
          h(
            "tr",
            { "data-delivery-endpoint": d.endpoint_id },
            h(
              "td",
              { class: "mono" },
              h("a", { href: ctx.href("endpoints", { id: d.endpoint_id }) }, d.endpoint_id),
            ),
            h("td", {}, outcomeBadge(d.status)),
            h("td", { class: "num" }, String(d.requests)),
            h(
              "td",
              { class: "num" },
              d.last_status_code === null || d.last_status_code === undefined
                ? "—"
                : String(d.last_status_code),
            ),
            h("td", {}, d.last_error ? h("pre", { class: "error-text" }, d.last_error) : "—"),
            h("td", { class: "nowrap" }, time(d.last_attempt_at)),
            h("td", { class: "nowrap" }, time(d.acknowledged_at)),
          ),
        ),
      ),
    ),
  );
}

function timeline(attempts) {
  if (!attempts.length) return h("p", { class: "empty" }, "No attempt yet.");
  return h(
    "ol",
    { class: "timeline" },
    attempts.map((a) =>
      h(
        "li",
        { class: `attempt attempt-${a.outcome}`, "data-attempt": String(a.attempt) },
        h(
          "div",
          { class: "attempt-head" },
          h("span", { class: "attempt-number" }, `#${a.attempt}`),
          " ",
          outcomeBadge(a.outcome),
          " ",
          h("span", { class: "muted" }, `by ${a.source}${a.worker ? ` (${a.worker})` : ""}`),
        ),
        h(
          "dl",
          { class: "attempt-times" },
          h("dt", {}, "Started"),
          h("dd", {}, time(a.started_at)),
          h("dt", {}, "Finished"),
          h("dd", {}, time(a.finished_at)),
          h("dt", {}, "Took"),
          h("dd", {}, duration(a.started_at, a.finished_at)),
        ),
        a.error_message ? h("pre", { class: "error-text" }, a.error_message) : null,
      ),
    ),
  );
}
