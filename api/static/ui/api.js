// The JSON API, called with the signed-in token. Paths are relative to the page (/ui), so the
// dashboard works under a proxy's path prefix as the API does.

import { token } from "./session.js";

/** An answer that is not a success: the envelope's message, as the API wrote it. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

function url(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") query.set(name, value);
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

async function call(method, path, { params, body, signal } = {}) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${token() || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url(path, params), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
      referrerPolicy: "no-referrer",
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "Cannot reach the API");
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch (error) {
    if (error.name === "AbortError") throw error;
  }
  if (!response.ok || !payload || payload.success !== true) {
    const message =
      payload && typeof payload.message === "string" ? payload.message : `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return payload;
}

export const api = {
  listEvents: (params, signal) => call("GET", "system/events", { params, signal }),
  event: (id, params, signal) =>
    call("GET", `system/events/${encodeURIComponent(id)}`, { params, signal }),
  stats: (params, signal) => call("GET", "system/events/stats", { params, signal }),
  setStatus: (id, params, body) =>
    call("PUT", `system/events/${encodeURIComponent(id)}`, { params, body }),
  replay: (params, body, signal) => call("POST", "system/events/replay", { params, body, signal }),
  modules: (signal) => call("GET", "system/modules", { signal }),
  pause: (module) => call("POST", `system/modules/${encodeURIComponent(module)}/pause`, {}),
  resume: (module) => call("POST", `system/modules/${encodeURIComponent(module)}/resume`, {}),
  heldKeys: (params, signal) => call("GET", "system/held-keys", { params, signal }),
  release: (id, params) =>
    call("POST", `system/held-keys/${encodeURIComponent(id)}/release`, { params }),
  endpoints: (params, signal) => call("GET", "system/endpoints", { params, signal }),
  endpointDeliveries: (id, params, signal) =>
    call("GET", `system/endpoints/${encodeURIComponent(id)}/deliveries`, { params, signal }),
  updateEndpoint: (id, params, body) =>
    call("PUT", `system/endpoints/${encodeURIComponent(id)}`, { params, body }),
  rotateSecret: (id, params) =>
    call("POST", `system/endpoints/${encodeURIComponent(id)}/rotate-secret`, { params }),
};
