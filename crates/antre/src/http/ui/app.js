// antre's web UI: a small single-page app over the management API, with no
// framework and no build step (ES modules served from the binary).
//
// A page is a function `(view, ...route params) => nodes` that builds its
// DOM once per visit. The parts that show broker state are registered on
// the view (`view.live`, `view.add`) and re-rendered on every refresh from
// what the view's loader fetched; everything else (forms, what the user
// typed, the result of a Get, notices after an action) is left alone, so
// the periodic refresh never wipes it.

import { h, api, auth, setAuth, clearAuth, setMe, whenLoggedOut, flash, flashNavigated } from "./dom.js";
import { lineChart } from "./chart.js";
import { overviewPage } from "./overview.js";
import { queuesPage, queuePage } from "./queues.js";
import { exchangesPage, exchangePage } from "./exchanges.js";
import { connectionsPage, connectionPage, channelsPage, channelPage } from "./connections.js";
import { adminPage } from "./admin.js";

const REFRESH_KEY = "antre.refresh_ms";
const DEFAULT_REFRESH_MS = 5000;

let current = null;   // the view on screen
let timer = null;
let busy = null;      // the refresh in flight
let refreshes = 0;    // completed refreshes, for tests

/// A view: one visit to one page. `load(fn)` sets what each refresh
/// fetches; `live(render)` is an element redrawn from that data;
/// `add(component)` takes a `{ el, update }` (a listing) that refreshes
/// itself.
function newView() {
  const parts = [];
  let loader = null;
  const status = h("p", { class: "error card", role: "alert", hidden: true });
  return {
    status,
    load(fn) { loader = fn; },
    live(render, attrs) {
      const el = h("div", attrs || {});
      parts.push(data => el.replaceChildren(...[render(data)].flat(Infinity).filter(x => x !== null && x !== undefined && x !== false)));
      return el;
    },
    add(component) { parts.push(() => component.update()); return component.el; },
    each(fn) { parts.push(fn); },
    async refresh() {
      const data = loader ? await loader() : null;
      await Promise.all(parts.map(p => p(data)));
    },
  };
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const [first, ...rest] = parts;
  switch (first) {
    case "queues": return rest.length === 2 ? ["queues", queuePage, rest] : ["queues", queuesPage, []];
    case "exchanges": return rest.length === 2 ? ["exchanges", exchangePage, rest] : ["exchanges", exchangesPage, []];
    case "connections": return rest.length === 1 ? ["connections", connectionPage, rest] : ["connections", connectionsPage, []];
    case "channels": return rest.length === 1 ? ["channels", channelPage, rest] : ["channels", channelsPage, []];
    case "admin": return ["admin", adminPage, [rest[0] || "users"]];
    default: return ["overview", overviewPage, []];
  }
}

/// Builds the page the address names.
async function mount() {
  if (!auth()) return showLogin();
  flashNavigated();
  const [name, page, args] = route();
  for (const a of document.querySelectorAll("nav a")) {
    const active = a.dataset.page === name;
    a.classList.toggle("active", active);
    if (active) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const view = newView();
  current = view;
  const target = document.getElementById("page");
  try {
    const nodes = await page(view, ...args);
    await view.refresh();
    if (current !== view) return;
    target.replaceChildren(view.status, ...[nodes].flat(Infinity).filter(Boolean));
    target.dataset.page = name;
  } catch (err) {
    if (current === view) target.replaceChildren(h("p", { class: "error card", role: "alert" }, err.message));
  }
}

/// Refreshes the page on screen once. A failure shows above the page and
/// keeps what it showed.
async function refreshOnce() {
  const view = current;
  if (!view) return;
  try {
    await view.refresh();
    view.status.hidden = true;
  } catch (err) {
    view.status.textContent = `Could not refresh: ${err.message}`;
    view.status.hidden = false;
  }
  refreshes++;
}

/// What the timer runs; also `antreUI.refresh()`, so tests drive the
/// refresh instead of waiting for it. Waits for a refresh in flight.
async function refresh() {
  while (busy) await busy;
  busy = refreshOnce();
  try { await busy; } finally { busy = null; }
}

function refreshMs() {
  const v = Number(localStorage.getItem(REFRESH_KEY));
  return Number.isFinite(v) && v >= 0 && localStorage.getItem(REFRESH_KEY) !== null ? v : DEFAULT_REFRESH_MS;
}

function schedule() {
  clearInterval(timer);
  const ms = refreshMs();
  // A hidden tab does not refresh: the broker does not render lists no
  // one looks at.
  if (ms > 0) timer = setInterval(() => { if (!busy && !document.hidden) refresh(); }, ms);
}

function refreshControl() {
  const options = [[0, "off"], [2000, "2 s"], [5000, "5 s"], [10000, "10 s"], [30000, "30 s"], [60000, "1 min"]];
  const chosen = refreshMs();
  const sel = h("select", { id: "refresh-every", onchange: () => { localStorage.setItem(REFRESH_KEY, sel.value); schedule(); } },
    options.map(([ms, label]) => h("option", { value: ms, selected: ms === chosen }, label)));
  return h("label", { class: "refresh" }, "Refresh every ", sel);
}

function showLogin() {
  clearInterval(timer);
  current = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("page").replaceChildren();
  document.getElementById("flash").replaceChildren();
  document.getElementById("whoami").replaceChildren();
  document.getElementById("login").hidden = false;
}

function logout() {
  clearAuth();
  showLogin();
}
whenLoggedOut(logout);

// The header for a logged-in user: the Admin tab only for administrators.
function showUser(me) {
  setMe(me);
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("nav-admin").hidden = !me.tags.includes("administrator");
  const tags = me.tags.length ? ` (${me.tags.join(", ")})` : "";
  document.getElementById("whoami").replaceChildren(refreshControl(), h("span", {}, `${me.name}${tags}`),
    h("button", { type: "button", class: "secondary", onclick: logout }, "Log out"));
}

async function start() {
  const me = await api("GET", "/api/whoami");
  showUser(me);
  schedule();
  await mount();
}

document.getElementById("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const err = document.getElementById("login-error");
  err.textContent = "";
  setAuth(document.getElementById("login-user").value, document.getElementById("login-password").value);
  try {
    await start();
  } catch (ex) {
    clearAuth();
    showLogin();
    err.textContent = ex.message === "please log in"
      ? "Login failed: check the user and password (guest works from localhost only)."
      : `Login refused: ${ex.message} (the management UI needs a user with a management tag).`;
  }
});

window.addEventListener("hashchange", () => mount());

// For tests and the curious: run one refresh now (resolves when drawn),
// count the refreshes done, draw a chart.
window.antreUI = { refresh, get refreshes() { return refreshes; }, lineChart, flash };

if (auth()) start().catch(() => showLogin());
else showLogin();
