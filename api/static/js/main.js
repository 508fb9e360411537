// The page's wiring: the API key, the stream list refreshed every few seconds, the selected stream's
// tabs, and its live feed (server-sent events) that pushes question updates and alert events.

import { ApiError, api, events, key, sleep, whenUnauthorized } from "./api.js";
import { addEvent, clearAlerts, loadAlerts, setupAlerts } from "./alerts.js";
import { $, $$, notify } from "./dom.js";
import { loadMemory } from "./memory.js";
import { asQuestion, clearAnswers, loadHistory, setupAsk, setupHistory, update } from "./questions.js";
import { renderDetail, renderList, setupRegister } from "./streams.js";

const REFRESH_MS = 5000;
const state = { streams: [], selected: null, feed: null, tab: "ask", timer: null, paused: false };
const current = () => state.selected;

function showKeyPanel(reason) {
  $("#key-panel").hidden = false;
  $("#key-reason").textContent = reason;
  $("#key-input").value = "";
  $("#key-input").focus();
  state.paused = true;
}

whenUnauthorized((error) => {
  showKeyPanel(key.get() ? `The server refused this key: ${error.message}` : "This server needs an API key.");
});

async function refresh(deselect = false) {
  clearTimeout(state.timer);
  if (deselect) select(null);
  try {
    const page = await api("/streams", { query: { limit: 100, status: $("#status-filter").value } });
    state.streams = page.data;
    state.paused = false;
    $("#key-panel").hidden = true;
    await renderList(state.streams, state.selected?.id, select, REFRESH_MS);
    const fresh = state.selected && state.streams.find((s) => s.id === state.selected.id);
    if (fresh) { state.selected = fresh; renderDetail(fresh, refresh); }
    if (state.selected && state.tab === "memory") loadMemory(state.selected.id);
    document.body.dataset.ready = "1";
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) notify(`streams: ${error.message}`, "error");
  }
  if (!state.paused) state.timer = setTimeout(refresh, REFRESH_MS);
}

function select(stream) {
  const changed = stream?.id !== state.selected?.id;
  state.selected = stream;
  document.body.dataset.selected = stream ? stream.id : "";
  if (!changed) return;
  state.feed?.abort();
  clearAnswers();
  clearAlerts();
  if (!stream) { $("#detail").hidden = true; return; }
  renderDetail(stream, refresh);
  $$("#streams button.stream").forEach((b) => b.setAttribute("aria-pressed", String(b.closest("li").dataset.id === stream.id)));
  showTab(state.tab);
  state.feed = new AbortController();
  followFeed(stream.id, state.feed.signal);
  if (window.matchMedia("(max-width: 760px)").matches) $("#detail").scrollIntoView({ behavior: "smooth" });
}

function showTab(name) {
  state.tab = name;
  for (const tab of $$("[role=tab]")) {
    const on = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(on));
    $(`#tab-${tab.dataset.tab}`).hidden = !on;
  }
  const id = state.selected?.id;
  if (!id) return;
  if (name === "history") loadHistory(id);
  if (name === "alerts") loadAlerts(id);
  if (name === "memory") loadMemory(id);
}

/** The stream's feed: question updates and alert events as they happen; reconnects with a pause. */
async function followFeed(streamId, signal) {
  let wait = 1000, lastEventId = null;
  while (!signal.aborted) {
    try {
      const path = `/streams/${encodeURIComponent(streamId)}/events`;
      for await (const message of events(path, { signal, lastEventId })) {
        wait = 1000;
        lastEventId = message.id ?? lastEventId;
        $("#detail").dataset.feed = "live";
        const question = asQuestion(message);
        if (question) update(question);
        else if (message.event.startsWith("alert") && message.data?.alert_id) addEvent(message.data);
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && [401, 404, 405, 415].includes(error.status)) {
        $("#detail").dataset.feed = "none";  // no feed on this server: tabs refresh on their own
        return;
      }
    }
    $("#detail").dataset.feed = "reconnecting";
    await sleep(wait, signal);
    wait = Math.min(wait * 2, 30000);
  }
}

function setup() {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    key.set($("#key-input").value.trim());
    refresh();
  });
  $("#key-forget").addEventListener("click", () => { key.set(""); showKeyPanel("Key forgotten."); });
  $("#key-button").addEventListener("click", () => showKeyPanel(key.get() ? "Replace the stored key." : "Enter a key."));
  $("#status-filter").addEventListener("change", () => refresh());
  $("#back").addEventListener("click", () => $("#streams-pane").scrollIntoView({ behavior: "smooth" }));
  for (const tab of $$("[role=tab]")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  setInterval(() => {  // alerts have no other trigger when the feed is missing
    if (state.selected && state.tab === "alerts" && !document.hidden) loadAlerts(state.selected.id);
  }, REFRESH_MS);
  setupRegister((stream) => { refresh(); select(stream); });
  setupAsk(current);
  setupHistory();
  setupAlerts();
  refresh();
}

setup();
