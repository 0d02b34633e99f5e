// Endpoints: the tenant's webhook endpoints (GET /system/endpoints) with their health, read again
// while open; per endpoint its last failed deliveries on demand (…/deliveries?status=failed),
// Disable / Enable (PUT … {"enabled": …}) and Rotate secret (POST …/rotate-secret), each
// confirmed first. A rotation's new secret is shown here once: it lives in this view's DOM
// only (never a URL, sessionStorage or a log) until the operator hides it or leaves the view.

import { api } from "./api.js";
import { h, replace } from "./dom.js";
import { count } from "./format.js";
import { heading, time } from "./parts.js";

const FAILURES_SHOWN = 10;

export function mount(ctx) {
  const state = {
    allTenants: ctx.identity.isAdmin && !ctx.tenant,
    endpoints: null,
    expanded: new Set(), // endpoints whose last failures are open
    failures: new Map(), // endpoint id → its last failed deliveries, while open
  };
  const asked = ctx.params.get("id") || ""; // an endpoint named by an event's deliveries
  if (asked) state.expanded.add(asked);

  const secretBox = h("section", {
    class: "secret-box",
    "aria-labelledby": "secret-title",
    hidden: true,
  });
  const summary = h("p", { class: "summary", "aria-live": "polite" }, "Loading…");
  const results = h("div", { class: "results" });
  ctx.main.append(
    heading("Endpoints"),
    h(
      "p",
      {},
      "Webhook endpoints receive their module's events over HTTP, signed with their secret. " +
        "One that fails for too long is disabled; its events wait for it until it is enabled " +
        "again.",
    ),
    secretBox,
    summary,
    results,
  );

  let last = null;
  const draw = () => replace(results, table(ctx, state, actions));

  const actions = {
    toggle(id) {
      if (state.expanded.has(id)) state.expanded.delete(id);
      else state.expanded.add(id);
      last = null; // the next reading draws again, whatever it finds
      draw();
      if (state.expanded.has(id)) ctx.refreshNow();
    },

    async setEnabled(endpoint, enabled) {
      const yes = await ctx.confirm({
        title: enabled ? "Enable this endpoint?" : "Disable this endpoint?",
        text: enabled
          ? `${endpoint.url} receives ${endpoint.target_module}'s events again; the events ` +
            "waiting for it are sent now."
          : `${endpoint.url} receives no event until it is enabled again: its events wait ` +
            "for it (none is lost).",
        action: enabled ? "Enable" : "Disable",
      });
      if (!yes) return;
      try {
        const answer = await api.updateEndpoint(endpoint.id, ctx.scope(), { enabled });
        const now = answer.endpoint;
        ctx.notice(`Endpoint ${now.enabled ? "enabled" : "disabled"}: ${now.url}`);
        ctx.refreshNow();
      } catch (error) {
        ctx.fail(error);
      }
    },

    async rotate(endpoint) {
      const yes = await ctx.confirm({
        title: "Rotate this endpoint's secret?",
        text:
          `A new signing secret is made for ${endpoint.url} and shown here once. The current ` +
          "one stays valid for a while (a day by default), deliveries carrying a signature " +
          "with each, so its receiver can move to the new one.",
        action: "Rotate secret",
      });
      if (!yes) return;
      try {
        const answer = await api.rotateSecret(endpoint.id, ctx.scope());
        showSecret(secretBox, answer.endpoint);
        ctx.notice(`Secret rotated: ${answer.endpoint.url}`);
        ctx.refreshNow();
      } catch (error) {
        ctx.fail(error);
      }
    },
  };

  return {
    async refresh(signal) {
      const scope = ctx.scope();
      const answer = await api.endpoints(scope, signal);
      const ids = new Set(answer.endpoints.map((e) => e.id));
      const open = [...state.expanded].filter((id) => ids.has(id));
      const lists = await Promise.all(
        open.map((id) =>
          api.endpointDeliveries(
            id,
            { ...scope, status: "failed", limit: String(FAILURES_SHOWN) },
            signal,
          ),
        ),
      );
      const text = JSON.stringify([answer.endpoints, open, lists.map((l) => l.deliveries)]);
      if (text === last) return;
      last = text;
      state.endpoints = answer.endpoints;
      state.failures = new Map(open.map((id, i) => [id, lists[i].deliveries]));
      const n = answer.endpoints.length;
      summary.textContent =
        `${count(n)} endpoint${n === 1 ? "" : "s"} in ${ctx.tenantLabel()}, oldest first.`;
      draw();
    },
  };
}

/** The new secret, once: a read-only field to copy it from, until "Done" empties the box. */
function showSecret(box, endpoint) {
  const input = h("input", {
    id: "new-secret",
    type: "text",
    class: "mono secret",
    readonly: true,
    autocomplete: "off",
    spellcheck: "false",
    size: "48",
    "aria-describedby": "secret-note",
  });
  input.value = endpoint.secret || "";
  input.addEventListener("focus", () => input.select());
  const said = h("span", { class: "muted", "aria-live": "polite" });
  const copy = async () => {
    input.focus();
    input.select();
    try {
      await navigator.clipboard.writeText(input.value);
      said.textContent = "Copied.";
    } catch {
      said.textContent = "Selected: press Ctrl+C (⌘C on a Mac) to copy it.";
    }
  };
  const hide = () => {
    box.replaceChildren();
    box.hidden = true;
    const title = document.querySelector(".view-title");
    if (title) title.focus();
  };
  const previous = endpoint.previous_secret_expires_at;
  replace(
    box,
    h("h2", { id: "secret-title" }, "New signing secret"),
    h(
      "p",
      { id: "secret-note" },
      `For ${endpoint.url} (${endpoint.target_module}). Copy it now: it will not be shown ` +
        "again.",
    ),
    previous
      ? h(
          "p",
          { class: "muted" },
          "The previous secret stays valid until ",
          time(previous),
          ": until then deliveries carry a signature with each.",
        )
      : h("p", { class: "muted" }, "The previous secret is no longer valid."),
    h(
      "div",
      { class: "secret-line" },
      h("label", { for: "new-secret" }, "Secret"),
      input,
      h("button", { type: "button", class: "primary", onclick: copy }, "Copy"),
      h("button", { type: "button", onclick: hide }, "Done: hide it"),
    ),
    said,
  );
  box.hidden = false;
  input.focus();
}

function eventTypes(types) {
  if (!Array.isArray(types)) return h("span", { class: "muted" }, "all");
  return types.join(", ");
}

/** Enabled and healthy; failing since when; disabled, and why. */
function health(endpoint) {
  const lines = [];
  if (!endpoint.enabled) {
    const reason = endpoint.disabled_reason;
    lines.push(
      h(
        "span",
        { class: "health health-disabled", "data-health": "disabled" },
        reason ? `Disabled: ${reason}` : "Disabled",
      ),
    );
    if (endpoint.failing_since) {
      lines.push(h("div", { class: "muted" }, "failing since ", time(endpoint.failing_since)));
    }
  } else if (endpoint.failing_since) {
    lines.push(
      h(
        "span",
        { class: "health health-failing", "data-health": "failing" },
        "Failing since ",
        time(endpoint.failing_since),
      ),
    );
  } else {
    lines.push(
      h("span", { class: "health health-ok", "data-health": "healthy" }, "Enabled and healthy"),
    );
  }
  if (endpoint.previous_secret_expires_at) {
    lines.push(
      h(
        "div",
        { class: "muted" },
        "previous secret valid until ",
        time(endpoint.previous_secret_expires_at),
      ),
    );
  }
  return lines;
}

function failuresBlock(ctx, deliveries) {
  const title = h("h3", {}, `Last failures (at most ${FAILURES_SHOWN}, newest first)`);
  if (deliveries === undefined) return [title, h("p", { class: "summary" }, "Loading…")];
  if (!deliveries.length) return [title, h("p", { class: "empty" }, "No failed delivery.")];
  const head = ["Time", "Status code", "Error", "Event"];
  return [
    title,
    h(
      "table",
      { class: "failures" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
      h(
        "tbody",
        {},
        deliveries.map((d) =>
          h(
            "tr",
            { "data-delivery-event": d.event_id },
            h("td", { class: "nowrap" }, time(d.last_attempt_at)),
            h(
              "td",
              { class: "num" },
              d.last_status_code === null || d.last_status_code === undefined
                ? h("span", { class: "muted" }, "no answer")
                : String(d.last_status_code),
            ),
            h("td", {}, d.last_error ? h("pre", { class: "error-text" }, d.last_error) : "—"),
            h(
              "td",
              { class: "mono" },
              h(
                "a",
                {
                  href: ctx.href("event", { id: d.event_id }),
                  "aria-label": `Event ${d.event_id}`,
                },
                d.event_id, // whole: ids made within a minute share their first characters
              ),
            ),
          ),
        ),
      ),
    ),
  ];
}

function rowActions(endpoint, open, panel, actions) {
  const id = endpoint.id;
  return h(
    "div",
    { class: "row-actions" },
    h(
      "button",
      {
        type: "button",
        "data-key": `failures-${id}`,
        "aria-expanded": open ? "true" : "false",
        "aria-controls": open ? panel : null,
        onclick: () => actions.toggle(id),
      },
      "Last failures",
    ),
    h(
      "button",
      {
        type: "button",
        "data-key": `enabled-${id}`,
        onclick: () => actions.setEnabled(endpoint, !endpoint.enabled),
      },
      endpoint.enabled ? "Disable…" : "Enable…",
    ),
    h(
      "button",
      { type: "button", "data-key": `rotate-${id}`, onclick: () => actions.rotate(endpoint) },
      "Rotate secret…",
    ),
  );
}

function table(ctx, state, actions) {
  if (state.endpoints === null) return null;
  if (!state.endpoints.length) {
    return h("p", { class: "empty" }, "No endpoint (POST /system/endpoints makes one).");
  }
  const head = [
    "URL",
    "Module",
    "Event types",
    "Format",
    "Ordered",
    "Health",
    ...(state.allTenants ? ["Tenant"] : []),
    "Actions",
  ];
  const rows = state.endpoints.map((e) => {
    const open = state.expanded.has(e.id);
    const panel = `failures-${e.id}`;
    return [
      h(
        "tr",
        { "data-endpoint-id": e.id, class: e.enabled ? null : "endpoint-off" },
        h("td", { class: "mono url", "data-field": "url" }, e.url),
        h("td", {}, e.target_module),
        h("td", {}, eventTypes(e.event_types)),
        h("td", { class: "nowrap" }, e.format),
        h("td", {}, e.ordered ? "yes" : "no"),
        h("td", { "data-field": "health" }, health(e)),
        state.allTenants ? h("td", { class: "mono" }, e.tenant_id) : null,
        h("td", {}, rowActions(e, open, panel, actions)),
      ),
      open
        ? h(
            "tr",
            { class: "failures-row", id: panel, "data-failures-for": e.id },
            h("td", { colspan: String(head.length) }, failuresBlock(ctx, state.failures.get(e.id))),
          )
        : null,
    ];
  });
  return h(
    "div",
    {
      class: "table-wrap",
      tabindex: "0",
      role: "region",
      "aria-label": "Endpoints",
      "data-key": "endpoints-table",
    },
    h(
      "table",
      { class: "endpoints" },
      h("caption", { class: "visually-hidden" }, "Webhook endpoints, oldest first"),
      h("thead", {}, h("tr", {}, head.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows),
    ),
  );
}
