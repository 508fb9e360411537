// Standing questions (alerts) on the selected stream and the events they fired, with thumbnails.

import { api, blob } from "./api.js";
import { $, h, notify, put, seconds, when } from "./dom.js";

const enc = encodeURIComponent;
const thumbs = new Map();  // event id -> object URL of its thumbnail
const state = { stream: null, alerts: [] };

function list(text) {
  return text.split(",").map((part) => part.trim()).filter(Boolean);
}

/** The alert form: a question with options, the ones that fire, how often and over what window. */
export function setupAlerts() {
  $("#alert-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!state.stream) return;
    const body = { question: $("#alert-question").value.trim(), options: list($("#alert-options").value),
      fire_on: list($("#alert-fire-on").value) };
    const every = $("#alert-every").value, window = $("#alert-window").value, hook = $("#alert-webhook").value.trim();
    const cooldown = $("#alert-cooldown").value;
    if (every) body.every_s = Number(every);
    if (window) body.window_s = Number(window);
    if (cooldown) body.cooldown_s = Number(cooldown);
    if (hook) body.webhook_url = hook;
    try {
      const alert = await api(`/streams/${enc(state.stream)}/alerts`, { method: "POST", body });
      $("#alert-question").value = "";
      if (hook && alert.signing_secret) {
        put($("#alert-secret"), "Webhook signing secret (shown once): ", h("code", {}, alert.signing_secret));
      }
      notify("alert created");
      loadAlerts();
    } catch (error) {
      notify(`alert: ${error.field ? `${error.field}: ` : ""}${error.message}`, "error");
    }
  });
}

function alertItem(alert) {
  const rule = `fires on ${(alert.fire_on || []).join(" or ")} of ${(alert.options || []).join(" / ")}`;
  const period = alert.every_s ? `every ${seconds(alert.every_s)}` : "every chunk";
  return h("li", { class: "alert", dataset: { id: alert.id } },
    h("p", { class: "q" }, alert.question),
    h("p", { class: "meta muted" }, `${rule} · ${period}`,
      alert.window_s ? ` · looks at the last ${seconds(alert.window_s)}` : "",
      alert.cooldown_s ? ` · quiet ${seconds(alert.cooldown_s)} after firing` : "",
      alert.last_answer ? ` · last answer: ${alert.last_answer}` : "",
      alert.active === false ? " · paused" : ""),
    h("button", { type: "button", class: "small secondary", onclick: () => removeAlert(alert) }, "Delete"));
}

async function removeAlert(alert) {
  try {
    await api(`/alerts/${enc(alert.id)}`, { method: "DELETE" });
    loadAlerts();
  } catch (error) { notify(`alert: ${error.message}`, "error"); }
}

async function thumbnail(event) {
  if (!event.thumbnail_url?.startsWith("/")) return null;  // none stored (or not a path of this server)
  if (thumbs.has(event.id)) return thumbs.get(event.id);
  try {
    const url = URL.createObjectURL(await blob(event.thumbnail_url));
    thumbs.set(event.id, url);
    return url;
  } catch { thumbs.set(event.id, null); return null; }
}

async function eventItem(event) {
  const alert = state.alerts.find((a) => a.id === event.alert_id);
  const url = await thumbnail(event);
  const at = event.wall_end || event.wall_start ? when(event.wall_end || event.wall_start)
    : `stream ${seconds(event.t_start)} – ${seconds(event.t_end)}`;
  return h("li", { class: "event", dataset: { id: event.id, alert: event.alert_id } },
    url ? h("img", { src: url, alt: "the chunk's frame", class: "event-thumb" })
      : h("div", { class: "event-thumb no-frame" }, "no thumbnail"),
    h("div", {},
      h("p", { class: "q" }, alert ? alert.question : (event.question || "alert")),
      h("p", {}, h("span", { class: "badge fired" }, event.answer ?? "fired"), ` ${at}`),
      h("p", { class: "muted" }, `chunk ${event.seq ?? "?"}`,
        event.delivery_status && event.delivery_status !== "none" ? ` · webhook ${event.delivery_status}` : "")));
}

/** Load the stream's alerts and their latest events. */
export async function loadAlerts(streamId) {
  if (streamId !== undefined) state.stream = streamId;
  if (!state.stream) return;
  try {
    const [alerts, events] = await Promise.all([
      api("/alerts", { query: { stream_id: state.stream, limit: 100 } }),
      api("/events", { query: { stream_id: state.stream, limit: 30 } }),
    ]);
    state.alerts = alerts.data ?? alerts;
    put($("#alerts"), state.alerts.length ? state.alerts.map(alertItem)
      : h("li", { class: "muted" }, "No alerts on this stream."));
    const items = await Promise.all((events.data ?? events).map(eventItem));
    put($("#alert-events"), items.length ? items : h("li", { class: "muted" }, "No events yet."));
  } catch (error) {
    notify(`alerts: ${error.message}`, "error");
  }
}

/** An alert event from the stream's live feed: show it at once. */
export async function addEvent(event) {
  if (!event?.id || document.querySelector(`#alert-events li[data-id="${CSS.escape(event.id)}"]`)) return;
  const list = $("#alert-events");
  list.querySelector("li.muted")?.remove();
  list.prepend(await eventItem(event));
}

export function clearAlerts() {
  for (const url of thumbs.values()) if (url) URL.revokeObjectURL(url);
  thumbs.clear();
  put($("#alerts"));
  put($("#alert-events"));
  put($("#alert-secret"));
}
