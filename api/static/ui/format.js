// How numbers and instants read on the page. Times are shown in UTC, as the API writes them.

/** "2026-12-02 00:01:02 UTC" from an RFC 3339 instant; "—" for none. */
export function instant(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return `${date.toISOString().slice(0, 19).replace("T", " ")} UTC`;
}

/** "00:01:02" (UTC) */
export function clock(date) {
  return date.toISOString().slice(11, 19);
}

/** "00:01" (UTC) of a minute's instant. */
export function minute(date) {
  return date.toISOString().slice(11, 16);
}

/** An age or a wait in seconds: "4 s", "3 min 20 s", "2 h 5 min", "3 d 4 h"; "—" for none. */
export function age(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** How long an attempt ran: "230 ms", "4.2 s"; "—" when a bound is unknown. */
export function duration(startIso, endIso) {
  if (!startIso || !endIso) return "—";
  const ms = new Date(endIso).getTime() - new Date(startIso).getTime();
  if (!Number.isFinite(ms)) return "—";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

const NUMBER = new Intl.NumberFormat("en");

export function count(n) {
  return NUMBER.format(n ?? 0);
}
