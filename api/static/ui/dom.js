// Building the page: every node is made with createElement / createElementNS and every piece of
// data is written with textContent (through text nodes). Nothing here parses HTML, so an event's
// data holding "<script>" or "<img onerror=…>" is shown as those characters.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setAttributes(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) {
      // Listeners are functions, never attribute strings (CSP refuses inline handlers anyway).
      node.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

/** An HTML element: h("a", {href: "?view=events", class: "btn"}, "Events"). */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attrs);
  return append(node, children);
}

/** An SVG element, attributes set with setAttribute (presentation attributes, not style). */
export function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttributes(node, attrs);
  return append(node, children);
}

/**
 * Replace a region's content, keeping the keyboard focus: a re-render every second must not
 * throw a keyboard user back to the top. Focusable nodes carry data-key; the one focused
 * before is focused again when the new content holds the same key.
 */
export function replace(region, ...children) {
  const active = document.activeElement;
  const key = active && region.contains(active) ? active.dataset.key : undefined;
  const fresh = append(document.createDocumentFragment(), children);
  region.replaceChildren(fresh);
  if (key !== undefined) {
    const again = [...region.querySelectorAll("[data-key]")].find((n) => n.dataset.key === key);
    if (again) again.focus({ preventScroll: true });
  }
}

/** A labelled form field; the label's for= and the control's id tie them together. */
export function field(label, control, hint) {
  const hintNode = hint ? h("span", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  if (hintNode) control.setAttribute("aria-describedby", hintNode.id);
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control, hintNode);
}
