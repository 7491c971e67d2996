// DOM building, formatting, the API client and forms, shared by every page.
// Text always goes through text nodes, never innerHTML, so names and
// payloads from the broker cannot inject markup.

const AUTH_KEY = "antre.auth";
let onLoggedOut = () => {};

/// Builds an element: `h("a", { href, onclick }, "text", child, [more])`.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const svgNS = "http://www.w3.org/2000/svg";
/// Builds an SVG element.
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  append(el, children);
  return el;
}

export const enc = encodeURIComponent;

/// A number with thousands separators and at most one decimal.
export function fmt(n) {
  if (n === undefined || n === null) return "–";
  if (typeof n !== "number") return String(n);
  if (Number.isInteger(n)) return n.toLocaleString("en");
  return n.toLocaleString("en", { maximumFractionDigits: 1 });
}

export function bytes(n) {
  if (!n && n !== 0) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/// "1 queue", "2 queues".
export function count(n, one, many) {
  return `${fmt(n)} ${n === 1 ? one : many || `${one}s`}`;
}

export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "–";
}

// ---- the API --------------------------------------------------------------

export function auth() { return sessionStorage.getItem(AUTH_KEY); }
export function setAuth(user, password) { sessionStorage.setItem(AUTH_KEY, btoa(`${user}:${password}`)); }
export function clearAuth() { sessionStorage.removeItem(AUTH_KEY); }
let me = null;
/// Remembers who is logged in (`/api/whoami`), for pages that offer
/// administrators more.
export function setMe(who) { me = who; }
/// Whether the logged-in user is an administrator.
export function isAdmin() { return !!me && me.tags.includes("administrator"); }
/// What to do when the broker no longer accepts the stored login.
export function whenLoggedOut(fn) { onLoggedOut = fn; }

/// Calls the management API with the stored login; throws an Error with
/// the broker's reason on failure.
export async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Basic " + auth() } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  // 401 "not_authorized" is a failed login; "not_authorised" is a user
  // who may not do this (RabbitMQ's two spellings), who stays logged in.
  if (resp.status === 401 && !(json && json.error === "not_authorised")) {
    onLoggedOut();
    throw new Error("please log in");
  }
  if (!resp.ok) {
    const err = new Error((json && json.reason) || resp.statusText || `HTTP ${resp.status}`);
    err.status = resp.status;
    err.code = json && json.error;
    throw err;
  }
  return json;
}

// ---- building blocks ------------------------------------------------------

export function stat(label, value, id) {
  return h("div", { class: "stat" }, h("div", { class: "value", id }, typeof value === "string" ? value : fmt(value)),
    h("div", { class: "label" }, label));
}

/// A definition list of `[term, value]` pairs (values may be nodes).
export function details(pairs) {
  return h("dl", { class: "details card" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v === undefined || v === null || v === "" ? "–" : v)]));
}

export function field(label, input, hint) {
  return h("label", {}, label, input, hint ? h("span", { class: "hint" }, hint) : null);
}

export function checkbox(name, label, checked) {
  return h("label", { class: "check" }, h("input", { type: "checkbox", name, checked }), label);
}

export function select(name, options, attrs) {
  return h("select", { name, ...attrs }, options.map(o => Array.isArray(o)
    ? h("option", { value: o[0] }, o[1])
    : h("option", { value: o }, o)));
}

/// Replaces a select's options, keeping the chosen one if it still exists.
export function setOptions(sel, values) {
  const chosen = sel.value;
  sel.replaceChildren(...values.map(v => h("option", { value: v }, v)));
  if (values.includes(chosen)) sel.value = chosen;
}

/// A form whose outcome (a notice or an error) stays under it until the
/// next submit: forms are built once per visit and never re-rendered by the
/// periodic refresh, so neither the notice nor what the user typed is lost.
export function form(title, fields, submit, onsubmit, attrs) {
  const msg = h("p", { class: "notice", role: "status" });
  const f = h("form", { class: "card form", ...attrs, onsubmit: async (e) => {
    e.preventDefault();
    msg.className = "notice"; msg.textContent = "";
    const button = f.querySelector("button[type=submit]");
    button.disabled = true;
    try { msg.textContent = (await onsubmit(f)) || "Done."; }
    catch (err) { msg.className = "error"; msg.setAttribute("role", "alert"); msg.textContent = err.message; }
    finally { button.disabled = false; }
  } }, title ? h("h2", {}, title) : null, fields, h("div", {}, h("button", { type: "submit" }, submit)), msg);
  return f;
}

export function val(f, name) { return f.elements[name].value; }
export function checked(f, name) { return f.elements[name].checked; }

/// A JSON object typed into a form field, or `{}` when it is empty.
export function jsonField(f, name, what) {
  const text = val(f, name).trim();
  if (!text) return {};
  let v;
  try { v = JSON.parse(text); } catch (e) { throw new Error(`${what} is not valid JSON: ${e.message}`); }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error(`${what} must be a JSON object such as {"key": "value"}`);
  return v;
}

/// A button that asks first, runs `action`, and reports the outcome in the
/// page's flash area (which survives refreshes).
export function actionButton(label, cls, question, action) {
  return h("button", { type: "button", class: cls, onclick: async () => {
    if (question && !confirm(question)) return;
    try { const text = await action(); if (text) flash(text); }
    catch (err) { flash(err.message, "error"); }
  } }, label);
}

// ---- flash: notices after an action -----------------------------------------

let flashRoute = null;

/// Shows a notice above the page until it is dismissed, replaced, or the
/// user goes to another page. `route` is the page it belongs to when the
/// action navigates (e.g. back to the list after deleting a queue).
export function flash(text, kind, route) {
  const area = document.getElementById("flash");
  flashRoute = route || location.hash;
  area.replaceChildren(h("div", { class: `flash ${kind === "error" ? "error" : "notice"}`, role: kind === "error" ? "alert" : "status" },
    h("span", {}, text),
    h("button", { type: "button", class: "link", "aria-label": "Dismiss", onclick: () => area.replaceChildren() }, "×")));
}

/// Called on navigation: a notice stays only on the page it belongs to.
export function flashNavigated() {
  if (flashRoute !== location.hash) {
    document.getElementById("flash").replaceChildren();
    flashRoute = null;
  }
}

/// Offers `text` as a file download.
export function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type: type || "application/json" }));
  const a = h("a", { href: url, download: name, hidden: true });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
