// Replay: for the list's filters, how many events match (POST /system/events/replay with
// dry_run: true, read again while open), then, once confirmed, the replay itself.

import { api } from "./api.js";
import { field, h } from "./dom.js";
import { count } from "./format.js";
import { describe, filterForm, filtersOf } from "./filters.js";
import { heading } from "./parts.js";

const DEFAULT_MAX = 10000;
const MAX_MAX = 100000;

export function mount(ctx) {
  const filters = filtersOf(ctx.params);
  const max = Number.parseInt(ctx.params.get("max") || "", 10);
  const limit = Number.isInteger(max) && max >= 1 && max <= MAX_MAX ? max : DEFAULT_MAX;

  const maxInput = h("input", {
    id: "replay-max",
    name: "max",
    type: "number",
    min: "1",
    max: String(MAX_MAX),
    inputmode: "numeric",
  });
  maxInput.value = String(limit);
  const form = filterForm({
    prefix: "replay",
    params: ctx.params,
    submitLabel: "Preview",
    extra: [field("At most", maxInput, "oldest first")],
    onSubmit: (values) => {
      const most = values.max === String(DEFAULT_MAX) ? "" : values.max;
      ctx.navigate(ctx.href("replay", { ...values, max: most }));
    },
    onClear: () => ctx.navigate(ctx.href("replay", {})),
  });

  const preview = h("p", { class: "preview", "data-key": "preview" }, "Counting…");
  const run = h("button", { type: "button", class: "danger", disabled: true }, "Replay…");
  const result = h("p", { class: "result", "aria-live": "polite" });
  ctx.main.append(
    heading("Replay"),
    h(
      "p",
      {},
      "Sets every event the filters match pending again and sends it to its module, oldest " +
        "first (as a Retry does for one). Preview first: it changes nothing.",
    ),
    form,
    h(
      "section",
      { class: "replay-box", "aria-labelledby": "replay-preview-title" },
      h("h2", { id: "replay-preview-title" }, "Preview"),
      preview,
      h(
        "p",
        { class: "view-links" },
        run,
        " ",
        h("a", { href: ctx.href("events", filters) }, "See these events"),
      ),
      result,
    ),
  );

  const scope = ctx.scope();
  const body = (dryRun) => ({ ...filters, dry_run: dryRun, max: limit });
  let matched = null;

  run.addEventListener("click", async () => {
    if (!matched) return;
    const n = Math.min(matched, limit);
    const where = ctx.tenantLabel();
    const warning = Object.keys(filters).length
      ? ""
      : ` No filter is set: this is every event of ${where}.`;
    const yes = await ctx.confirm({
      title: `Replay ${count(n)} event${n === 1 ? "" : "s"}?`,
      text:
        `${count(n)} of ${count(matched)} matching events (${describe(filters)}, ${where}) ` +
        `are set pending and sent to their modules again.${warning}`,
      action: "Replay",
    });
    if (!yes) return;
    run.disabled = true;
    try {
      const answer = await api.replay(scope, body(false));
      result.textContent =
        `Replayed ${count(answer.replayed)} of ${count(answer.matched)} matching events.`;
      ctx.notice(answer.message);
      ctx.refreshNow();
    } catch (error) {
      ctx.fail(error);
    } finally {
      run.disabled = !matched;
    }
  });

  return {
    async refresh(signal) {
      const answer = await api.replay(scope, body(true), signal);
      matched = answer.matched;
      preview.textContent =
        `${count(answer.matched)} ${answer.matched === 1 ? "event matches" : "events match"} ` +
        `${describe(filters)} in ${ctx.tenantLabel()}.`;
      preview.dataset.matched = String(answer.matched);
      run.disabled = answer.matched === 0;
      const n = Math.min(answer.matched, limit);
      run.textContent = `Replay ${count(n)} event${n === 1 ? "" : "s"}…`;
    },
  };
}
