// Building the page's DOM from nodes, never from HTML strings: every string a server or a user gave becomes a text node.

const SVG_NS = "http://www.w3.org/2000/svg";

/** An element: h("li", {class: "x", dataset: {id}}, "text", child, ...). Strings become text nodes. */
export function h(tag, attrs = {}, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** The same for SVG elements (attributes set with setAttribute). */
export function s(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

function fill(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = String(value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** Replace an element's children. */
export function put(el, ...children) {
  el.replaceChildren();
  return fill(el, {}, children);
}

export function when(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

export function seconds(value) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "";
  const total = Number(value);
  if (total < 60) return `${total.toFixed(total < 10 ? 1 : 0)} s`;
  const m = Math.floor(total / 60), sec = Math.round(total % 60);
  return m < 60 ? `${m} min ${sec} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function bytes(value) {
  if (value === null || value === undefined) return "";
  const units = ["B", "kB", "MB", "GB"];
  let v = Number(value), i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Show a short message in the page's status line (errors stay until the next message). */
export function notify(text, kind = "info") {
  const bar = document.getElementById("notice");
  if (!bar) return;
  bar.textContent = text;
  bar.dataset.kind = kind;
  bar.hidden = !text;
  clearTimeout(notify.timer);
  if (kind !== "error" && text) notify.timer = setTimeout(() => { bar.hidden = true; }, 4000);
}
