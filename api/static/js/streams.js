// The stream list with each stream's latest frame, the register form, and the selected stream's header.

import { ApiError, api, blob } from "./api.js";
import { $, bytes, h, notify, put } from "./dom.js";

const enc = encodeURIComponent;
const MOVING = new Set(["connecting", "live", "reconnecting"]);
const frames = new Map();  // stream id -> {url, at}: object URLs of the latest frames, revoked when replaced

/** Fetch a stream's latest frame (with the key) into an object URL; null while it has none. */
async function frameUrl(stream, maxAgeMs) {
  const cached = frames.get(stream.id);
  if (cached && (Date.now() - cached.at < maxAgeMs || !MOVING.has(stream.status))) return cached.url;
  try {
    const url = URL.createObjectURL(await blob(`/streams/${enc(stream.id)}/frame.jpg`));
    if (cached?.url) URL.revokeObjectURL(cached.url);
    frames.set(stream.id, { url, at: Date.now() });
    return url;
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    frames.set(stream.id, { url: cached?.url ?? null, at: Date.now() });
    return cached?.url ?? null;
  }
}

function frameImage(url, alt, className) {
  return url ? h("img", { src: url, alt, class: className })
    : h("div", { class: `${className} no-frame` }, "no frame yet");
}

function summary(stream) {
  const done = stream.chunks?.done ?? stream.chunks?.applied ?? null;
  return [done != null ? `${done} chunks` : null,
    stream.memory_tokens != null ? `${stream.memory_tokens} tokens` : null].filter(Boolean).join(" · ");
}

/** Draw the list (select(stream) on a click) and refresh frames at most every `frameMs`. */
export async function renderList(streams, selectedId, select, frameMs) {
  const list = $("#streams");
  const items = await Promise.all(streams.map(async (stream) => {
    const url = await frameUrl(stream, frameMs).catch(() => null);
    const button = h("button", { type: "button", class: "stream", "aria-pressed": String(stream.id === selectedId),
      onclick: () => select(stream) },
    frameImage(url, `latest frame of ${stream.name}`, "thumb"),
    h("span", { class: "stream-text" },
      h("span", { class: "stream-name" }, stream.name || stream.id),
      h("span", { class: `badge ${stream.status}` }, stream.status),
      h("span", { class: "muted" }, summary(stream))));
    return h("li", { dataset: { id: stream.id, status: stream.status } }, button);
  }));
  put(list, items.length ? items : h("li", { class: "muted" }, "No streams yet: register one below."));
}

/** The selected stream's header: name, status, reason, figures, its frame and its actions. */
export function renderDetail(stream, refresh) {
  $("#detail").hidden = false;
  $("#detail").dataset.id = stream.id;
  $("#d-name").textContent = stream.name || stream.id;
  const badge = $("#d-status");
  badge.textContent = stream.status;
  badge.className = `badge ${stream.status}`;
  put($("#d-facts"),
    ...[["source", stream.source], ["reason", stream.status_reason], ["chunks", summary(stream)],
      ["memory", stream.memory_bytes != null ? bytes(stream.memory_bytes) : null]]
      .filter(([, v]) => v).map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
  const cached = frames.get(stream.id)?.url;
  put($("#d-frame"), frameImage(cached, `latest frame of ${stream.name}`, "frame"));
  const running = stream.active ?? MOVING.has(stream.status);
  put($("#d-actions"),
    running ? h("button", { type: "button", class: "secondary", onclick: () => act(stream, "stop", refresh) }, "Stop")
      : h("button", { type: "button", class: "secondary", onclick: () => act(stream, "start", refresh) }, "Start"),
    h("button", { type: "button", class: "danger", onclick: () => remove(stream, refresh) }, "Delete…"));
}

async function act(stream, verb, refresh) {
  try {
    await api(`/streams/${enc(stream.id)}/${verb}`, { method: "POST" });
    notify(`${verb === "stop" ? "stopped" : "started"} ${stream.name}`);
  } catch (error) { notify(`${verb}: ${error.message}`, "error"); }
  refresh();
}

async function remove(stream, refresh) {
  const choice = $("#delete-dialog");
  $("#delete-name").textContent = stream.name || stream.id;
  choice.returnValue = "";
  choice.showModal();
  choice.addEventListener("close", async () => {
    if (!["keep", "delete"].includes(choice.returnValue)) return;
    try {
      await api(`/streams/${enc(stream.id)}`, { method: "DELETE", query: { history: choice.returnValue } });
      notify(`deleted ${stream.name} (${choice.returnValue === "keep" ? "history kept" : "history deleted"})`);
    } catch (error) { notify(`delete: ${error.message}`, "error"); }
    refresh(true);
  }, { once: true });
}

/** The register form: POST /streams, then select the new stream. */
export function setupRegister(onCreated) {
  const form = $("#register-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { source: $("#source").value.trim() };
    const name = $("#stream-name").value.trim();
    if (name) body.name = name;
    if ($("#loop").checked) body.loop = true;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const stream = await api("/streams", { method: "POST", body });
      form.reset();
      notify(`registered ${stream.name}`);
      onCreated(stream);
    } catch (error) {
      notify(`register: ${error.field ? `${error.field}: ` : ""}${error.message}`, "error");
    } finally { button.disabled = false; }
  });
}
