// The bearer token: in this tab's sessionStorage only (never a URL, a cookie or a log), and
// what the page reads from its payload to say who is signed in. The payload is decoded for
// display only: the API verifies the token on every call and decides every right.

const KEY = "eventbus.token";

export function token() {
  return sessionStorage.getItem(KEY);
}

export function signIn(value) {
  sessionStorage.setItem(KEY, value);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

/** The token as pasted, without a leading "Bearer " and surrounding whitespace. */
export function clean(value) {
  return value.trim().replace(/^bearer\s+/i, "").trim();
}

/** The JWT's claims, or {} when it cannot be read (the API will say "Invalid token"). */
export function claims(jwt) {
  const part = (jwt || "").split(".")[1];
  if (!part) return {};
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const value = JSON.parse(new TextDecoder().decode(bytes));
    return value && typeof value === "object" && !Array.isArray(value) ? value : {};
  } catch {
    return {};
  }
}

/** Who the page shows as signed in. */
export function identity(jwt) {
  const c = claims(jwt);
  return {
    sub: typeof c.sub === "string" ? c.sub : "",
    tenantId: typeof c.tenant_id === "string" ? c.tenant_id : null,
    permissions: Array.isArray(c.permissions)
      ? c.permissions.filter((p) => typeof p === "string")
      : [],
    isAdmin: c.is_system_admin === true,
    expires: typeof c.exp === "number" ? new Date(c.exp * 1000) : null,
  };
}
