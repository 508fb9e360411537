// Asking a question and watching its answer arrive (SSE, else long-poll), and the searchable history.

import { ApiError, api, blob, events, sleep } from "./api.js";
import { $, bytes, h, notify, put, seconds, when } from "./dom.js";

const FINAL = new Set(["done", "failed", "cancelled"]);
const PAGE = 20;
const enc = encodeURIComponent;
const following = new Map();  // question id -> AbortController of its live view
const MAX_HELD = 2;  // questions followed over a held connection (events or long-poll) at once
let holding = 0;

/** The question in a `question` event (a full QuestionPublic); null for any other event. */
export function asQuestion(message) {
  const data = message?.data;
  if (message?.event !== "question" || !data || typeof data !== "object") return null;
  return typeof data.id === "string" && typeof data.status === "string" && "text" in data ? data : null;
}

function span(start, end) {
  return start == null && end == null ? "" : `${seconds(start ?? 0)} – ${end == null ? "now" : seconds(end)}`;
}

function facts(q) {
  const asked = q.window_last != null ? `the last ${seconds(q.window_last)}` : span(q.window_start, q.window_end);
  const rows = [
    ["asked", when(q.queued_at || q.created_at)], ["started", when(q.started_at)],
    ["finished", when(q.finished_at)], ["latency", q.latency_s != null ? seconds(q.latency_s) : ""],
    ["window asked", asked || "all it remembers"], ["video seen", span(q.covered_start, q.covered_end)],
    ["tokens in memory", q.memory_tokens], ["tokens in window", q.visual_tokens_before],
    ["tokens to the LLM", q.visual_tokens_after], ["model", q.model], ["method", q.method],
  ];
  return h("dl", { class: "facts" }, rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
}

/** One question as a list item; `render` again with a newer snapshot updates it in place. */
function item(q, actions) {
  const li = h("li", { class: "question", dataset: { id: q.id } });
  render(li, q, actions);
  return li;
}

function render(li, q, actions = true) {
  li.dataset.status = q.status;
  const position = q.status === "queued" && q.queue_position != null ? ` · position ${q.queue_position}` : "";
  const answer = q.answer ?? (q.error ? `error: ${q.error}` : FINAL.has(q.status) ? "" : "…");
  put(li,
    h("p", { class: "q" }, q.text ?? li.querySelector(".q")?.textContent ?? ""),
    h("p", { class: "meta" }, h("span", { class: `badge ${q.status}` }, q.status), position,
      q.stream_name ? ` · ${q.stream_name}` : ""),
    h("p", { class: "a", "aria-live": "polite" }, answer),
    h("details", {}, h("summary", {}, "details"), facts(q)),
    actions ? buttons(q) : null);
}

function buttons(q) {
  if (q.status === "queued") {
    return h("button", { type: "button", class: "small secondary", onclick: () => act(q.id, "cancel") }, "Cancel");
  }
  if (q.status === "failed" || q.status === "cancelled") {
    return h("button", { type: "button", class: "small secondary", onclick: () => act(q.id, "retry") }, "Retry");
  }
  return null;
}

async function act(id, verb) {
  try {
    const q = await api(`/questions/${enc(id)}/${verb}`, { method: "POST" });
    if (q?.text !== undefined) update(q);  // cancel answers the question; retry only its new state
    follow(id);
  } catch (error) { notify(`${verb}: ${error.message}`, "error"); }
}

/** Show a newer snapshot of a question wherever it is on the page. */
export function update(q) {
  for (const li of document.querySelectorAll(`li.question[data-id="${CSS.escape(q.id)}"]`)) {
    const old = li.dataset.status;
    if (FINAL.has(old) && !FINAL.has(q.status) && q.status !== "queued") continue;  // an older event
    render(li, q, li.closest("#answers") !== null);
  }
}

/**
 * Follow a question until it is final: its server-sent events first, long-poll (`?wait=`) when the
 * server has none or the stream closed early. A browser opens at most 6 connections to one server and
 * each of these holds one, so only MAX_HELD questions are followed that way at once; the others are
 * polled briefly every 2 s, leaving connections for the rest of the page.
 */
export async function follow(id) {
  following.get(id)?.abort();
  const control = new AbortController();
  following.set(id, control);
  const { signal } = control;
  const held = holding < MAX_HELD;
  if (held) holding += 1;
  try {
    if (held && await viaEvents(id, signal)) return;
    await viaPolling(id, signal, held);
  } finally {
    if (held) holding -= 1;
    if (following.get(id) === control) following.delete(id);
  }
}

function mark(id, via) {
  for (const li of document.querySelectorAll(`#answers li[data-id="${CSS.escape(id)}"]`)) li.dataset.via ||= via;
}

/** True when the events brought the question to a final state (or it is gone). */
async function viaEvents(id, signal) {
  try {
    for await (const message of events(`/questions/${enc(id)}/events`, { signal })) {
      if (message.event === "end") break;  // final: the last `question` event said so already
      const q = asQuestion(message);
      if (!q) continue;
      mark(id, "sse");
      update(q);
      if (FINAL.has(q.status)) return true;
    }
  } catch (error) {
    if (signal.aborted) return true;
    if (error instanceof ApiError && error.status === 404 && error.message.includes("question")) return true;
  }
  return false;
}

async function viaPolling(id, signal, held) {
  let wait = held ? 20 : 0;
  while (!signal.aborted) {
    const started = performance.now();
    try {
      const q = await api(`/questions/${enc(id)}`, { query: { wait }, signal });
      mark(id, "poll");
      update(q);
      if (FINAL.has(q.status)) return;
    } catch (error) {
      if (signal.aborted || (error instanceof ApiError && [401, 404].includes(error.status))) return;
      if (error instanceof ApiError && error.status === 422) wait = 0;  // a server with a shorter long-poll limit
      await sleep(2000, signal);
    }
    if (performance.now() - started < 800) await sleep(held ? 1000 : 2000, signal);
  }
}

export function stopFollowing() {
  for (const control of following.values()) control.abort();
  following.clear();
}

/** The ask form: queue the question, show it at the top, follow it live. */
export function setupAsk(current) {
  $("#ask-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const stream = current();
    const text = $("#ask-text").value.trim();
    if (!stream || !text) return;
    const body = { text };
    const last = $("#ask-window").value;
    if (last) body.last = Number(last);
    const button = $("#ask-form button[type=submit]");
    button.disabled = true;
    try {
      const queued = await api(`/streams/${enc(stream.id)}/questions`, { method: "POST", body });
      $("#answers").prepend(item({ ...queued, text, status: queued.status || "queued" }, true));
      $("#ask-text").value = "";
      follow(queued.id);
    } catch (error) {
      notify(`ask: ${error.message}`, "error");
    } finally { button.disabled = false; }
  });
}

export function clearAnswers() {
  stopFollowing();
  put($("#answers"));
}

// History ------------------------------------------------------------------------------------------

const history = { stream: null, cursor: null, loading: null };

function historyQuery() {
  const since = $("#history-since").value;
  return {
    stream_id: history.stream, q: $("#history-q").value.trim(), status: $("#history-status").value,
    since: since ? new Date(since).toISOString() : "",
  };
}

/** Load the first page (reset) or the next one after the cursor. */
export async function loadHistory(streamId, reset = true) {
  if (streamId !== undefined) history.stream = streamId;
  if (!history.stream) return;
  const list = $("#history");
  if (reset) history.cursor = null;
  const controller = new AbortController();
  history.loading?.abort();
  history.loading = controller;
  try {
    const page = await api("/questions", {
      query: { ...historyQuery(), limit: PAGE, cursor: reset ? "" : history.cursor }, signal: controller.signal,
    });
    if (reset) put(list);
    list.append(...page.data.map((q) => item(q, false)));
    history.cursor = page.next_cursor ?? page.next ?? null;
    $("#history-more").hidden = !history.cursor;
    $("#history-count").textContent = list.children.length ? `${list.children.length} shown` : "no questions match";
  } catch (error) {
    if (!controller.signal.aborted) notify(`history: ${error.message}`, "error");
  }
}

async function exportAs(format) {
  try {
    const file = await blob("/questions/export", { query: { ...historyQuery(), format } });
    const name = `vidmem-questions.${format}`;
    const link = h("a", { href: URL.createObjectURL(file), download: name, class: "export-link",
      dataset: { format } }, `${name} (${bytes(file.size)})`);
    put($("#export-links"), "Downloaded: ", link);
    link.click();
  } catch (error) { notify(`export: ${error.message}`, "error"); }
}

export function setupHistory() {
  let debounce = null;
  $("#history-form").addEventListener("submit", (event) => { event.preventDefault(); loadHistory(); });
  $("#history-q").addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(loadHistory, 400); });
  $("#history-status").addEventListener("change", () => loadHistory());
  $("#history-since").addEventListener("change", () => loadHistory());
  $("#history-more").addEventListener("click", () => loadHistory(undefined, false));
  $("#export-csv").addEventListener("click", () => exportAs("csv"));
  $("#export-jsonl").addEventListener("click", () => exportAs("jsonl"));
}
