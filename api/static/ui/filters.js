// The list's filters (GET /system/events): exact matches, AND-ed, an empty one no filter. The
// Events and Replay views share them, and keep them in the page's query string.

import { field, h } from "./dom.js";

export const STATUSES = ["pending", "processed", "failed"];
export const FILTERS = [
  ["status", "Status"],
  ["event_type", "Event type"],
  ["source_module", "Source module"],
  ["target_module", "Target module"],
  ["entity_type", "Entity type"],
  ["retry_scheduled", "Retry scheduled"],
];
// Filters chosen from a list: the value sent, and what the control shows.
const CHOICES = {
  status: STATUSES.map((status) => [status, status]),
  retry_scheduled: [
    ["true", "yes: a retry is to come"],
    ["false", "no (failed: gave up)"],
  ],
};

/** The filters a query string holds, empty ones left out. */
export function filtersOf(params) {
  const filters = {};
  for (const [name] of FILTERS) {
    const value = params.get(name);
    if (value) filters[name] = value;
  }
  return filters;
}

export function describe(filters) {
  const parts = FILTERS.filter(([name]) => filters[name]).map(
    ([name, label]) => `${label.toLowerCase()} = ${filters[name]}`,
  );
  return parts.length ? parts.join(", ") : "no filter";
}

function control(prefix, name, label, value) {
  const id = `${prefix}-${name}`;
  if (Object.hasOwn(CHOICES, name)) {
    const select = h(
      "select",
      { id, name },
      h("option", { value: "" }, "any"),
      CHOICES[name].map(([choice, text]) => h("option", { value: choice }, text)),
    );
    select.value = value || "";
    return field(label, select);
  }
  const input = h("input", {
    id,
    name,
    type: "text",
    autocomplete: "off",
    spellcheck: "false",
    maxlength: "255",
  });
  input.value = value || "";
  return field(label, input);
}

/**
 * The filter form. `extra` holds more fields; onSubmit(values) gets every field's value (the
 * page turns them into its query string: the view follows the URL, so a view can be shared).
 */
export function filterForm({ prefix, params, submitLabel, extra = [], onSubmit, onClear }) {
  const form = h(
    "form",
    { class: "filters", method: "post", "aria-label": "Filters" },
    FILTERS.map(([name, label]) => control(prefix, name, label, params.get(name))),
    extra,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary" }, submitLabel),
      h("button", { type: "button", onclick: () => onClear() }, "Clear filters"),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = {};
    for (const element of form.elements) {
      if (element.name) values[element.name] = element.value.trim();
    }
    onSubmit(values);
  });
  // On a phone the filters fold away (open when one is set); on a wide screen they stay open.
  const active = FILTERS.filter(([name]) => params.get(name)).length;
  const box = h(
    "details",
    { class: "filter-box" },
    h("summary", {}, active ? `Filters (${active} set)` : "Filters"),
    form,
  );
  box.open = active > 0 || window.matchMedia("(min-width: 40rem)").matches;
  return box;
}
