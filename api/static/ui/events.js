// Events: the list (GET /system/events) with every filter of the API, newest first, paged by
// cursor, read again while it is open.

import { api } from "./api.js";
import { field, h, replace } from "./dom.js";
import { count } from "./format.js";
import { describe, filterForm, filtersOf } from "./filters.js";
import { heading, statusBadge, time } from "./parts.js";

const LIMITS = ["25", "50", "100", "200"];
const DEFAULT_LIMIT = "50";

export function mount(ctx) {
  const filters = filtersOf(ctx.params);
  const asked = ctx.params.get("limit") || "";
  const limit = /^([1-9][0-9]{0,2}|1000)$/.test(asked) ? asked : DEFAULT_LIMIT;
  const cursor = ctx.params.get("cursor") || "";
  const allTenants = ctx.identity.isAdmin && !ctx.tenant;

  const limitSelect = h(
    "select",
    { id: "events-limit", name: "limit" },
    [...new Set([...LIMITS, limit])]
      .sort((a, b) => a - b)
      .map((n) => h("option", { value: n }, n)),
  );
  limitSelect.value = limit;
  const form = filterForm({
    prefix: "events",
    params: ctx.params,
    submitLabel: "Apply filters",
    extra: [field("Per page", limitSelect)],
    onSubmit: (values) => {
      const perPage = values.limit === DEFAULT_LIMIT ? "" : values.limit;
      ctx.navigate(ctx.href("events", { ...values, limit: perPage }));
    },
    onClear: () => ctx.navigate(ctx.href("events", {})),
  });
  const summary = h("p", { class: "summary", "aria-live": "polite" }, "Loading…");
  const results = h("div", { class: "results" });
  ctx.main.append(
    heading("Events"),
    form,
    h(
      "p",
      { class: "view-links" },
      h("a", { href: ctx.href("replay", filters), class: "button-link" }, "Replay these events…"),
    ),
    summary,
    results,
  );

  const query = { ...filters, limit, cursor, ...ctx.scope() };
  let last = null;

  return {
    async refresh(signal) {
      const page = await api.listEvents(query, signal);
      const text = JSON.stringify(page);
      if (text === last) return;
      last = text;
      const shown = page.events.length;
      summary.textContent =
        `${count(page.total)} ${page.total === 1 ? "event matches" : "events match"} ` +
        `${describe(filters)}; ${count(shown)} on this page, newest first.`;
      replace(
        results,
        table(ctx, page.events, allTenants),
        pager(ctx, filters, limit, cursor, page),
      );
    },
  };
}

function table(ctx, events, allTenants) {
  if (!events.length) return h("p", { class: "empty" }, "No event matches.");
  const head = [
    "Created",
    "Status",
    "Event type",
    "Source → target",
    "Entity",
    "Retries",
    ...(allTenants ? ["Tenant"] : []),
    "Event",
  ];
  return h(
    "div",
    {
      class: "table-wrap",
      tabindex: "0",
      role: "region",
      "aria-label": "Events",
      "data-key": "events-table",
    },
    h(
      "table",
      { class: "events" },
      h("caption", { class: "visually-hidden" }, "Events, newest first"),
      h("thead", {}, h("tr", {}, head.map((name) => h("th", { scope: "col" }, name)))),
      h(
        "tbody",
        {},
        events.map((event) =>
          h(
            "tr",
            { "data-event-id": event.id },
            h("td", { class: "nowrap" }, time(event.created_at)),
            h("td", { class: "nowrap" }, statusBadge(event)),
            h("td", {}, event.event_type),
            h("td", {}, `${event.source_module} → ${event.target_module}`),
            h("td", {}, `${event.entity_type} ${event.entity_id}`),
            h("td", { class: "num" }, String(event.retry_count)),
            allTenants ? h("td", { class: "mono" }, event.tenant_id) : null,
            h(
              "td",
              { class: "mono" },
              h(
                "a",
                {
                  href: ctx.href("event", { id: event.id }),
                  "data-key": `event-${event.id}`,
                  "aria-label": `Event ${event.id}`,
                },
                event.id.slice(0, 8),
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

function pager(ctx, filters, limit, cursor, page) {
  const base = { ...filters, limit: limit === DEFAULT_LIMIT ? "" : limit };
  const items = [];
  if (cursor) {
    items.push(
      h(
        "a",
        { href: ctx.href("events", base), "data-key": "first", rel: "first" },
        "← Newest (first page)",
      ),
    );
  }
  if (page.next_cursor) {
    items.push(
      h(
        "a",
        {
          href: ctx.href("events", { ...base, cursor: page.next_cursor }),
          "data-key": "next",
          rel: "next",
        },
        "Next page (older) →",
      ),
    );
  }
  return items.length ? h("nav", { class: "pager", "aria-label": "Pages" }, items) : null;
}
