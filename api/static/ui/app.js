// The dashboard's entry: sign-in, the header, client-side routing by the query string (the
// filters live there, so a view can be shared; the token never does), the confirmation dialog,
// and the poller that keeps the open view live.

import { ApiError } from "./api.js";
import * as detail from "./detail.js";
import { field, h, replace } from "./dom.js";
import * as endpoints from "./endpoints.js";
import * as events from "./events.js";
import { FILTERS } from "./filters.js";
import { clock } from "./format.js";
import * as overview from "./overview.js";
import { Poller } from "./poller.js";
import * as replay from "./replay.js";
import * as session from "./session.js";

const VIEWS = {
  overview: { module: overview, title: "Overview", nav: "overview" },
  events: { module: events, title: "Events", nav: "events" },
  event: { module: detail, title: "Event", nav: "events" },
  replay: { module: replay, title: "Replay", nav: "replay" },
  endpoints: { module: endpoints, title: "Endpoints", nav: "endpoints" },
};
// The order parameters take in a URL, so one view has one address (the list's own order).
const ORDER = ["id", ...FILTERS.map(([name]) => name), "max", "limit", "cursor"];
const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

const main = document.getElementById("main");
const header = document.getElementById("session");
const alertBox = document.getElementById("alert");
const statusBox = document.getElementById("status");
const live = h("span", { class: "live", id: "live" });

let identity = null;
let tenant = ""; // a system admin's choice; "" is every tenant
let lastList = {};
let alertSource = null;
let noticeTimer = null;

// --- messages --------------------------------------------------------------------------------

function showAlert(message, source) {
  alertBox.textContent = message;
  alertSource = source;
}

function clearAlert(source) {
  if (source === undefined || alertSource === source) {
    alertBox.textContent = "";
    alertSource = null;
  }
}

function notice(message) {
  statusBox.textContent = message;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    statusBox.textContent = "";
  }, 8000);
}

// --- live updates ----------------------------------------------------------------------------

const poller = new Poller(({ state, at, waitMs, error }) => {
  if (state === "live") {
    live.textContent = `Live · updated ${clock(at)} UTC`;
    live.dataset.state = "live";
    clearAlert("poll");
  } else if (state === "paused") {
    live.textContent = "Paused while this tab is hidden";
    live.dataset.state = "paused";
  } else if (state === "retrying") {
    live.textContent = `Retrying in ${Math.round(waitMs / 1000)} s`;
    live.dataset.state = "retrying";
    showAlert(error && error.message ? error.message : "Something went wrong", "poll");
  } else {
    live.textContent = "";
    live.dataset.state = "stopped";
  }
});

// --- the confirmation dialog (no window.confirm: a native dialog blocks the page) ------------

const dialog = document.getElementById("confirm");
const dialogTitle = document.getElementById("confirm-title");
const dialogText = document.getElementById("confirm-text");
const dialogOk = document.getElementById("confirm-ok");
const dialogCancel = document.getElementById("confirm-cancel");
let answerDialog = null;

function confirmAction({ title, text, action }) {
  if (answerDialog) answerDialog(false);
  const opener = document.activeElement;
  dialogTitle.textContent = title;
  dialogText.textContent = text;
  dialogOk.textContent = action;
  return new Promise((resolve) => {
    answerDialog = (yes) => {
      answerDialog = null;
      if (dialog.open) dialog.close();
      if (opener && opener.isConnected) opener.focus();
      resolve(yes);
    };
    dialog.showModal();
    dialogCancel.focus();
  });
}

dialogOk.addEventListener("click", () => answerDialog && answerDialog(true));
dialogCancel.addEventListener("click", () => answerDialog && answerDialog(false));
dialog.addEventListener("cancel", () => answerDialog && answerDialog(false)); // Esc

// --- routing ---------------------------------------------------------------------------------

function route() {
  const params = new URLSearchParams(location.search);
  const name = Object.hasOwn(VIEWS, params.get("view")) ? params.get("view") : "overview";
  return { name, params };
}

/** "?view=…&<params>": the tenant a system admin picked goes along, the token never. */
function href(view, params = {}, tenantId = tenant) {
  const query = new URLSearchParams({ view });
  const rank = (name) => (ORDER.includes(name) ? ORDER.indexOf(name) : ORDER.length);
  const entries = Object.entries(params).sort(([a], [b]) => rank(a) - rank(b));
  for (const [name, value] of entries) {
    if (value) query.set(name, value);
  }
  if (identity && identity.isAdmin && tenantId) query.set("tenant_id", tenantId);
  return `?${query}`;
}

function navigate(target) {
  if (target !== location.search) history.pushState(null, "", target);
  render({ focus: true });
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || url.pathname !== location.pathname) return;
  if (url.hash && url.search === location.search) return; // the skip link
  event.preventDefault();
  navigate(url.search || "?");
});
window.addEventListener("popstate", () => render({ focus: true }));

// --- the header --------------------------------------------------------------------------------

function tenantLabel() {
  if (identity.isAdmin) return tenant ? `tenant ${tenant}` : "all tenants";
  return identity.tenantId ? `tenant ${identity.tenantId}` : "no tenant";
}

function tenantPicker(name, params) {
  const input = h("input", {
    id: "tenant",
    name: "tenant_id",
    type: "text",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "all tenants",
    size: "36",
  });
  input.value = tenant;
  const form = h(
    "form",
    { class: "tenant-picker", method: "post", "aria-label": "Tenant" },
    field("Tenant (UUID; empty: all)", input),
    h("button", { type: "submit" }, "Show tenant"),
    h("button", { type: "button", onclick: () => pick("") }, "All tenants"),
  );
  function pick(value) {
    if (value && !UUID.test(value)) {
      showAlert("Invalid tenant_id", "tenant");
      input.focus();
      return;
    }
    clearAlert("tenant");
    const dropped = ["view", "tenant_id", "cursor", "id"]; // an id is the other tenant's
    const keep = Object.fromEntries([...params].filter(([k]) => !dropped.includes(k)));
    // Another tenant's event is not this one: go to the list from its detail.
    const view = name === "event" ? "events" : name;
    navigate(href(view, view === "events" && name === "event" ? lastList : keep, value));
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    pick(input.value.trim());
  });
  return form;
}

function renderHeader(name, params) {
  const current = VIEWS[name].nav;
  const links = [
    ["overview", "Overview"],
    ["events", "Events"],
    ["replay", "Replay"],
    ["endpoints", "Endpoints"],
  ].map(([view, label]) =>
    h("a", { href: href(view), "aria-current": view === current ? "page" : null }, label),
  );
  const role = identity.isAdmin ? "system admin" : tenantLabel();
  const rights = identity.permissions.length ? identity.permissions.join(", ") : "no permission";
  replace(
    header,
    h("nav", { class: "views", "aria-label": "Views" }, links),
    h(
      "div",
      { class: "who" },
      h("span", { class: "identity" }, `Signed in as ${identity.sub || "?"} · ${role} · ${rights}`),
      live,
      h("button", { type: "button", id: "sign-out", onclick: signOut }, "Sign out"),
    ),
    identity.isAdmin ? tenantPicker(name, params) : null,
  );
}

// --- signing in and out ------------------------------------------------------------------------

function renderSignIn() {
  header.replaceChildren();
  document.title = "Sign in — eventbus";
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
  });
  const form = h(
    "form",
    { class: "sign-in", method: "post", "aria-label": "Sign in" },
    field(
      "Bearer token",
      input,
      "Kept in this tab's sessionStorage only and sent to this API as the Authorization header.",
    ),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = session.clean(input.value);
    input.value = "";
    if (!value) {
      showAlert("Authentication required", "sign-in");
      input.focus();
      return;
    }
    clearAlert();
    session.signIn(value);
    render({ focus: true });
  });
  main.replaceChildren(
    h("h1", { class: "view-title" }, "Sign in"),
    h(
      "p",
      {},
      "Paste a bearer token with manage:system, or a system admin's (for development, " +
        "eventbus token makes one). What you see and may change is exactly what the API " +
        "allows that token.",
    ),
    form,
  );
  input.focus();
}

function signOut() {
  poller.stop();
  session.signOut();
  identity = null;
  tenant = "";
  lastList = {};
  clearAlert();
  renderSignIn();
  notice("Signed out.");
}

/** The API refused the token (401): forget it and ask for another. */
function expired(message) {
  poller.stop();
  session.signOut();
  identity = null;
  renderSignIn();
  showAlert(message, "sign-in");
}

// --- rendering a view --------------------------------------------------------------------------

function render({ focus = false } = {}) {
  const token = session.token();
  poller.stop();
  if (!token) {
    renderSignIn();
    return;
  }
  clearAlert();
  identity = session.identity(token);
  const { name, params } = route();
  tenant = identity.isAdmin ? (params.get("tenant_id") || "").trim() : "";
  const view = VIEWS[name];
  document.title = `${view.title} — eventbus`;
  renderHeader(name, params);
  if (name === "events") {
    lastList = Object.fromEntries([...params].filter(([k]) => !["view", "tenant_id"].includes(k)));
  }
  main.replaceChildren();
  const ctx = {
    main,
    params,
    identity,
    tenant,
    href,
    navigate,
    tenantLabel,
    scope: () => (identity.isAdmin && tenant ? { tenant_id: tenant } : {}),
    lastList: () => lastList,
    confirm: confirmAction,
    notice,
    fail: (error) => {
      if (error instanceof ApiError && error.status === 401) expired(error.message);
      else showAlert(error.message, "action");
    },
    refreshNow: () => poller.now(),
  };
  const mounted = view.module.mount(ctx);
  poller.start(async (signal) => {
    try {
      await mounted.refresh(signal);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        expired(error.message);
        error.fatal = true;
      }
      throw error;
    }
  });
  if (focus) {
    const title = main.querySelector(".view-title");
    if (title) title.focus({ preventScroll: false });
  }
}

render();
