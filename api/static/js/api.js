// The API client: every call carries the stored key as a Bearer header, errors become ApiError with
// the server's `detail`, and server-sent events are read with fetch() (EventSource cannot send headers).

const KEY_STORAGE = "vidmem.apiKey";
let onUnauthorized = () => {};

export const key = {
  get: () => localStorage.getItem(KEY_STORAGE) || "",
  set: (value) => (value ? localStorage.setItem(KEY_STORAGE, value) : localStorage.removeItem(KEY_STORAGE)),
};

/** Called with the ApiError whenever the server answers 401 (no key, or a revoked or wrong one). */
export function whenUnauthorized(handler) { onUnauthorized = handler; }

export class ApiError extends Error {
  constructor(status, detail, field) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.field = field || null;
  }
}

function headers(extra = {}) {
  const out = new Headers(extra);
  const value = key.get();
  if (value) out.set("Authorization", `Bearer ${value}`);
  return out;
}

/** A path with its query string; parameters that are empty, null or undefined are left out. */
export function url(path, query = {}) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

async function failure(response) {
  let detail = response.statusText, field = null;
  try {
    const body = await response.json();
    detail = body.detail ?? detail;
    field = body.field ?? null;
    if (typeof detail !== "string") detail = JSON.stringify(detail);
  } catch { /* not JSON: keep the status text */ }
  const error = new ApiError(response.status, detail, field);
  if (response.status === 401) onUnauthorized(error);
  return error;
}

async function send(path, { method = "GET", body, query, signal, accept, lastEventId } = {}) {
  const extra = body === undefined ? {} : { "Content-Type": "application/json" };
  if (accept) extra.Accept = accept;
  if (lastEventId) extra["Last-Event-ID"] = lastEventId;
  const response = await fetch(url(path, query), {
    method, signal, cache: "no-store", headers: headers(extra),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response;
}

/** JSON in, JSON out (or null for an empty answer). */
export async function api(path, options = {}) {
  const response = await send(path, options);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** A binary resource (a frame, a thumbnail, an export) as a Blob, fetched with the key. */
export async function blob(path, options = {}) {
  return (await send(path, options)).blob();
}

/**
 * Server-sent events from `path`, yielded as {event, data, id} with `data` parsed as JSON when it is.
 * Throws ApiError when the server does not answer with an event stream (old server: the caller falls
 * back to long-polling), and ends when the server closes the stream or `signal` aborts. `lastEventId`
 * resumes after the event with that id, as EventSource does on a reconnect.
 */
export async function* events(path, { query, signal, lastEventId } = {}) {
  const response = await send(path, { query, signal, lastEventId, accept: "text/event-stream" });
  if (!(response.headers.get("content-type") || "").startsWith("text/event-stream") || !response.body) {
    throw new ApiError(415, "the server answered without an event stream");
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const message = parseEvent(block);
        if (message) yield message;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseEvent(block) {
  let event = "message", id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;  // a comment: the server's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (!data.length) return null;
  const text = data.join("\n");
  try { return { event, id, data: JSON.parse(text) }; } catch { return { event, id, data: text }; }
}

export const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});
