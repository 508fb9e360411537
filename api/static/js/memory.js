// The memory of the selected stream: its figures and a timeline plot drawn as inline SVG.
// The timeline has one entry per applied chunk: tokens_in (what the encoder made of it), tokens_out
// (what stage 1 kept when it was applied) and tokens_now (what of it the memory still holds, after
// later merging and eviction). Bars show tokens_now over the chunk's stream time, the line tokens_out.

import { api } from "./api.js";
import { $, bytes, h, notify, put, s, seconds, when } from "./dom.js";

const W = 640, H = 240, PAD = { left: 52, right: 12, top: 14, bottom: 42 };

const num = (value) => (typeof value === "number" && Number.isFinite(value) ? value : null);

export function points(memory) {
  return (memory.timeline ?? []).map((c) => ({
    seq: c.seq, t0: num(c.t_start), t1: num(c.t_end), now: num(c.tokens_now) ?? 0, kept: num(c.tokens_out),
  })).filter((p) => p.t0 !== null && p.t1 !== null).sort((a, b) => a.t0 - b.t0);
}

function ticks(min, max, count) {
  if (max <= min) return [min];
  return Array.from({ length: count + 1 }, (_, i) => min + (i * (max - min)) / count);
}

/** The plot: a bar per applied chunk (tokens still held from it) and a line (tokens kept when applied). */
export function plot(memory) {
  const data = points(memory);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "plot",
    "aria-label": "tokens held per chunk over stream time" });
  if (!data.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no chunks applied yet"));
    return svg;
  }
  const x0 = data[0].t0, x1 = Math.max(data[data.length - 1].t1, x0 + 1);
  const yMax = Math.max(1, ...data.map((p) => Math.max(p.now, p.kept ?? 0))) * 1.1;
  const X = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const Y = (y) => H - PAD.bottom - (y / yMax) * (H - PAD.top - PAD.bottom);
  for (const t of ticks(0, yMax / 1.1, 4)) {
    svg.append(s("line", { x1: PAD.left, x2: W - PAD.right, y1: Y(t), y2: Y(t), class: "grid" }),
      s("text", { x: PAD.left - 6, y: Y(t) + 4, "text-anchor": "end", class: "axis" }, Math.round(t)));
  }
  for (const t of ticks(x0, x1, 4)) {
    svg.append(s("text", { x: X(t), y: H - PAD.bottom + 16, "text-anchor": "middle", class: "axis" }, seconds(t)));
  }
  svg.append(s("text", { x: (W + PAD.left) / 2, y: H - 6, "text-anchor": "middle", class: "axis" },
    "stream time · bars: tokens held now · line: kept when applied"));
  for (const p of data) {
    const left = X(p.t0), width = Math.max(1, X(p.t1) - left - 1);
    svg.append(s("rect", { x: left.toFixed(1), y: Y(p.now).toFixed(1), width: width.toFixed(1),
      height: Math.max(0, Y(0) - Y(p.now)).toFixed(1), class: "bar", dataset: { seq: p.seq } },
    s("title", {}, `chunk ${p.seq}, ${seconds(p.t0)}–${seconds(p.t1)}: ${p.now} tokens held, ${p.kept ?? "?"} kept`)));
  }
  const kept = data.filter((p) => p.kept !== null);
  if (kept.length) {
    svg.append(s("path", { class: "line", d: kept.map((p, i) =>
      `${i ? "L" : "M"}${X((p.t0 + p.t1) / 2).toFixed(1)},${Y(p.kept).toFixed(1)}`).join(" ") }));
  }
  return svg;
}

function figures(memory) {
  const range = memory.first_seconds != null
    ? `${seconds(memory.first_seconds)} – ${seconds(memory.last_seconds)}` : null;
  const clock = memory.first_time ? `${when(memory.first_time)} – ${when(memory.last_time)}` : null;
  const rows = [
    ["tokens", `${memory.tokens} of ${memory.budget}`], ["bytes", bytes(memory.bytes)],
    ["stream time held", range ? `${range} (${seconds(memory.span_seconds)})` : null], ["clock time", clock],
    ["tokens per minute", memory.tokens_per_minute != null ? memory.tokens_per_minute.toFixed(1) : null],
    ["chunks applied", memory.chunks_applied],
    ["tokens seen · merged · evicted", `${memory.tokens_seen} · ${memory.tokens_merged} · ${memory.tokens_evicted}`],
  ];
  return rows.filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]);
}

export async function loadMemory(streamId) {
  if (!streamId) return;
  try {
    const memory = await api(`/streams/${encodeURIComponent(streamId)}/memory`);
    put($("#memory-facts"), ...figures(memory));
    put($("#memory-use"), h("meter", { min: 0, max: memory.budget, value: memory.tokens,
      "aria-label": "memory use against budget" }));
    put($("#memory-plot"), plot(memory));
  } catch (error) {
    notify(`memory: ${error.message}`, "error");
  }
}
