// Small pieces several views draw.

import { h } from "./dom.js";
import { instant } from "./format.js";

/** A status badge; a failed event with its next attempt known says "retry scheduled". */
export function statusBadge(event) {
  const badges = [h("span", { class: `badge badge-${event.status}` }, event.status)];
  if (event.status === "failed" && event.next_attempt_at) {
    badges.push(" ", h("span", { class: "badge badge-retry" }, "retry scheduled"));
  }
  return badges;
}

export function outcomeBadge(outcome) {
  return h("span", { class: `badge badge-${outcome}` }, outcome);
}

export function time(iso) {
  return iso ? h("time", { datetime: iso }, instant(iso)) : "—";
}

/** A heading the view focuses when it opens (keyboard and screen reader users land on it). */
export function heading(text) {
  return h("h1", { tabindex: "-1", class: "view-title" }, text);
}
