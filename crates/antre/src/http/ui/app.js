// antre's web UI: a small single-page app over the management API.
// No framework and no build step: `h()` builds DOM nodes (text always goes
// through textContent, never innerHTML), each page is a function that
// fetches what it shows and renders it, and the current page re-renders
// every REFRESH_MS. Charts are hand-drawn SVG.
"use strict";

const REFRESH_MS = 5000;
const AUTH_KEY = "antre.auth";
let timer = null;

// ---- helpers -------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const svgNS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function fmt(n) {
  if (n === undefined || n === null) return "–";
  if (typeof n !== "number") return String(n);
  if (Number.isInteger(n)) return n.toLocaleString("en");
  return n.toLocaleString("en", { maximumFractionDigits: 1 });
}

function bytes(n) {
  if (!n && n !== 0) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

const enc = encodeURIComponent;

function auth() { return sessionStorage.getItem(AUTH_KEY); }

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Basic " + auth() } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  const text = await resp.text();
  const json = text ? JSON.parse(text) : null;
  // 401 "not_authorized" is a failed login; "not_authorised" is a user
  // who may not do this (RabbitMQ's two spellings), which stays logged in.
  if (resp.status === 401 && !(json && json.error === "not_authorised")) { logout(); throw new Error("please log in"); }
  if (!resp.ok) throw new Error((json && json.reason) || resp.statusText);
  return json;
}

function stat(label, value, id) {
  return h("div", { class: "stat" }, h("div", { class: "value", id }, fmt(value)), h("div", { class: "label" }, label));
}

function table(columns, rows, empty) {
  if (!rows.length) return h("div", { class: "empty card" }, empty || "Nothing here yet.");
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map(c => h("th", { class: c.num ? "num" : "" }, c.title)))),
    h("tbody", {}, rows.map(r => h("tr", {}, columns.map(c => h("td", { class: c.num ? "num" : "" }, c.cell(r)))))));
}

function field(label, input) { return h("label", {}, label, input); }

function form(title, fields, submit, onsubmit) {
  const msg = h("p", { class: "notice" });
  const f = h("form", { class: "card form", onsubmit: async (e) => {
    e.preventDefault();
    msg.className = "notice"; msg.textContent = "";
    try { msg.textContent = (await onsubmit(f)) || "Done."; }
    catch (err) { msg.className = "error"; msg.textContent = err.message; }
  } }, h("h2", {}, title), fields, h("div", {}, h("button", { type: "submit" }, submit)), msg);
  return f;
}

function val(f, name) { return f.elements[name].value; }

// ---- charts --------------------------------------------------------------

// Rates between consecutive samples of a counter (samples newest first).
function ratesOf(samples) {
  const pts = (samples || []).slice().reverse();
  const out = [];
  for (let i = 1; i < pts.length; i++) {
    const dt = (pts[i].timestamp - pts[i - 1].timestamp) / 1000;
    if (dt > 0) out.push([pts[i].timestamp, Math.max(0, (pts[i].sample - pts[i - 1].sample) / dt)]);
  }
  return out;
}

function levelsOf(samples) {
  return (samples || []).slice().reverse().map(p => [p.timestamp, p.sample]);
}

function lineChart(title, series, unit) {
  const W = 600, H = 220, L = 48, R = 10, T = 12, B = 24;
  const all = series.flatMap(x => x.points);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const maxV = Math.max(1, ...all.map(p => p[1]));
  const now = Date.now();
  const t0 = all.length ? Math.min(...all.map(p => p[0])) : now - 600000;
  const t1 = Math.max(now, t0 + 1);
  const x = t => L + (W - L - R) * (t - t0) / (t1 - t0);
  const y = v => T + (H - T - B) * (1 - v / maxV);
  for (let i = 0; i <= 4; i++) {
    const v = maxV * i / 4;
    svg.appendChild(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e6e9ee" }));
    svg.appendChild(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7585" }, fmt(Math.round(v * 10) / 10)));
  }
  svg.appendChild(s("text", { x: L, y: H - 6, "font-size": 11, fill: "#6b7585" }, new Date(t0).toLocaleTimeString()));
  svg.appendChild(s("text", { x: W - R, y: H - 6, "font-size": 11, fill: "#6b7585", "text-anchor": "end" }, new Date(t1).toLocaleTimeString()));
  for (const ser of series) {
    if (!ser.points.length) continue;
    const d = ser.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.appendChild(s("path", { d, fill: "none", stroke: ser.color, "stroke-width": 2 }));
  }
  const legend = h("div", { class: "legend" }, series.map(ser => {
    const last = ser.points.length ? ser.points[ser.points.length - 1][1] : 0;
    return h("span", {}, h("i", { style: `background:${ser.color}` }), `${ser.name}: ${fmt(Math.round(last * 10) / 10)}${unit}`);
  }));
  return h("div", { class: "card chart" }, h("h2", {}, title), svg, legend);
}

// ---- pages ---------------------------------------------------------------

async function overviewPage() {
  const o = await api("GET", "/api/overview?msg_rates_age=600&lengths_age=600");
  const ms = o.message_stats, qt = o.queue_totals, ot = o.object_totals;
  return [
    h("h1", {}, `Overview · ${o.product_name} ${o.product_version} on ${o.node}`),
    h("div", { class: "stats", id: "overview-stats" },
      stat("Messages", qt.messages, "total-messages"),
      stat("Ready", qt.messages_ready, "total-ready"),
      stat("Unacked", qt.messages_unacknowledged, "total-unacked"),
      stat("Publish /s", ms.publish_details.rate, "rate-publish"),
      stat("Deliver /s", ms.deliver_get_details.rate, "rate-deliver"),
      stat("Ack /s", ms.ack_details.rate, "rate-ack"),
      stat("Connections", ot.connections, "total-connections"),
      stat("Channels", ot.channels, "total-channels"),
      stat("Queues", ot.queues, "total-queues"),
      stat("Consumers", ot.consumers, "total-consumers"),
      stat("Memory", bytes(o.mem_used)),
      stat("Disk free", bytes(o.disk_free) + (o.disk_free_alarm ? " ⚠ alarm" : ""))),
    h("div", { class: "charts" },
      lineChart("Message rates", [
        { name: "publish", color: "#0b6bcb", points: ratesOf(ms.publish_details.samples) },
        { name: "deliver", color: "#1e8449", points: ratesOf(ms.deliver_get_details.samples) },
        { name: "ack", color: "#d68910", points: ratesOf(ms.ack_details.samples) },
      ], "/s"),
      lineChart("Queued messages", [
        { name: "ready", color: "#0b6bcb", points: levelsOf(qt.messages_ready_details.samples) },
        { name: "unacked", color: "#c0392b", points: levelsOf(qt.messages_unacknowledged_details.samples) },
      ], "")),
    h("p", { class: "muted" }, `Rates are sampled every ${o.sample_interval} s. Listeners: `,
      o.listeners.map(l => `${l.protocol} ${l.ip_address}:${l.port}`).join(", ")),
  ];
}

function queueLink(q) {
  return h("a", { href: `#/queues/${enc(q.vhost)}/${enc(q.name)}` }, q.name);
}

async function queuesPage() {
  const qs = await api("GET", "/api/queues");
  const vhosts = await api("GET", "/api/vhosts");
  return [
    h("h1", {}, `Queues (${qs.length})`),
    table([
      { title: "Vhost", cell: q => q.vhost },
      { title: "Name", cell: queueLink },
      { title: "Type", cell: q => q.type || "classic" },
      { title: "Features", cell: q => [q.durable ? "D" : "", q.auto_delete ? "AD" : "", q.exclusive ? "Excl" : "", Object.keys(q.arguments).length ? "Args" : ""].filter(Boolean).join(" ") },
      { title: "Ready", num: true, cell: q => fmt(q.messages_ready) },
      { title: "Unacked", num: true, cell: q => fmt(q.messages_unacknowledged) },
      { title: "Total", num: true, cell: q => fmt(q.messages) },
      { title: "Consumers", num: true, cell: q => fmt(q.consumers) },
      { title: "Publish /s", num: true, cell: q => fmt(q.message_stats.publish_details.rate) },
      { title: "Deliver /s", num: true, cell: q => fmt(q.message_stats.deliver_get_details.rate) },
      { title: "Ack /s", num: true, cell: q => fmt(q.message_stats.ack_details ? q.message_stats.ack_details.rate : 0) },
    ], qs, "No queues yet."),
    h("div", { class: "forms" }, form("Add a queue", [
      field("Vhost", h("select", { name: "vhost" }, vhosts.map(v => h("option", {}, v.name)))),
      field("Name", h("input", { name: "name", required: true })),
      field("Durability", h("select", { name: "durable" }, h("option", { value: "true" }, "durable"), h("option", { value: "false" }, "transient"))),
      field("Arguments (JSON)", h("input", { name: "arguments", placeholder: '{"x-max-length": 1000}' })),
    ], "Add queue", async f => {
      const args = val(f, "arguments").trim() ? JSON.parse(val(f, "arguments")) : {};
      await api("PUT", `/api/queues/${enc(val(f, "vhost"))}/${enc(val(f, "name"))}`, { durable: val(f, "durable") === "true", arguments: args });
      render();
      return `Queue ${val(f, "name")} declared.`;
    })),
  ];
}

function publishForm(vhost, exchange, routingKey) {
  return form("Publish a message", [
    field("Routing key", h("input", { name: "routing_key", value: routingKey || "" })),
    field("Delivery mode", h("select", { name: "delivery_mode" }, h("option", { value: "1" }, "1 - transient"), h("option", { value: "2" }, "2 - persistent"))),
    field("Headers (JSON)", h("input", { name: "headers", placeholder: '{"kind": "refund"}' })),
    field("Payload", h("textarea", { name: "payload", rows: 4 })),
  ], "Publish", async f => {
    const headers = val(f, "headers").trim() ? JSON.parse(val(f, "headers")) : undefined;
    const r = await api("POST", `/api/exchanges/${enc(vhost)}/${enc(exchange || "amq.default")}/publish`, {
      routing_key: val(f, "routing_key"), payload: val(f, "payload"), payload_encoding: "string",
      properties: { delivery_mode: Number(val(f, "delivery_mode")), headers },
    });
    render();
    return r.routed ? "Message published." : "Message published, but it was not routed to any queue.";
  });
}

async function queuePage(vhost, name) {
  const base = `/api/queues/${enc(vhost)}/${enc(name)}`;
  const q = await api("GET", base);
  const bindings = await api("GET", `${base}/bindings`);
  const out = h("div", { id: "get-result" });
  if (q.type === "stream") return streamPage(q, bindings);
  return [
    h("h1", {}, `Queue ${q.name} `, h("span", { class: "muted" }, `in vhost ${q.vhost}`)),
    h("div", { class: "stats" },
      stat("Ready", q.messages_ready, "queue-ready"), stat("Unacked", q.messages_unacknowledged, "queue-unacked"),
      stat("Total", q.messages), stat("Consumers", q.consumers),
      stat("Publish /s", q.message_stats.publish_details.rate), stat("Deliver /s", q.message_stats.deliver_get_details.rate),
      stat("Ack /s", q.message_stats.ack_details.rate), stat("Ready bytes", bytes(q.message_bytes_ready))),
    h("p", { class: "muted" }, `${q.durable ? "durable" : "transient"}${q.auto_delete ? ", auto-delete" : ""}${q.exclusive ? ", exclusive" : ""}; arguments: ${JSON.stringify(q.arguments)}`),
    h("h2", {}, "Consumers"),
    table([
      { title: "Tag", cell: c => c.consumer_tag },
      { title: "Channel", cell: c => c.channel_details ? c.channel_details.name : "" },
      { title: "Ack required", cell: c => c.ack_required ? "yes" : "no" },
      { title: "Prefetch", num: true, cell: c => fmt(c.prefetch_count) },
      { title: "Unacked", num: true, cell: c => fmt(c.messages_unacknowledged) },
    ], q.consumer_details || [], "No consumers."),
    h("h2", {}, "Bindings"),
    table([
      { title: "From exchange", cell: b => b.source || "(default exchange)" },
      { title: "Routing key", cell: b => b.routing_key },
      { title: "Arguments", cell: b => JSON.stringify(b.arguments) },
    ], bindings),
    h("div", { class: "forms" },
      form("Get messages", [
        field("Messages", h("input", { name: "count", type: "number", value: 1, min: 1 })),
        field("Ack mode", h("select", { name: "ackmode" },
          h("option", { value: "ack_requeue_true" }, "Nack, requeue"),
          h("option", { value: "ack_requeue_false" }, "Ack, remove from queue"),
          h("option", { value: "reject_requeue_false" }, "Reject, dead-letter or drop"))),
        out,
      ], "Get messages", async f => {
        const msgs = await api("POST", `${base}/get`, { count: Number(val(f, "count")), ackmode: val(f, "ackmode"), encoding: "auto" });
        out.replaceChildren(...msgs.map(m => h("div", { class: "message" },
          h("div", { class: "muted" }, `exchange "${m.exchange}", routing key "${m.routing_key}"${m.redelivered ? ", redelivered" : ""}, ${m.payload_bytes} bytes, ${m.message_count} left`),
          h("div", { class: "muted" }, `properties: ${JSON.stringify(m.properties)}`),
          h("pre", {}, m.payload))));
        return msgs.length ? `${msgs.length} message(s).` : "The queue is empty.";
      }),
      publishForm(vhost, "", name),
      h("div", { class: "card form" }, h("h2", {}, "Purge or delete"),
        h("div", { class: "row" },
          h("button", { class: "secondary", id: "purge", onclick: async () => { if (confirm(`Purge queue ${name}?`)) { await api("DELETE", `${base}/contents`); render(); } } }, "Purge messages"),
          h("button", { class: "danger", onclick: async () => { if (confirm(`Delete queue ${name}?`)) { await api("DELETE", base); location.hash = "#/queues"; } } }, "Delete queue")))),
  ];
}

// A stream: its offsets and size instead of ready/unacked, consumers with
// the offset each reads next; no get or purge (streams refuse both).
function streamPage(q, bindings) {
  const base = `/api/queues/${enc(q.vhost)}/${enc(q.name)}`;
  const offset = o => (o === null || o === undefined ? "-" : fmt(o));
  return [
    h("h1", {}, `Stream ${q.name} `, h("span", { class: "muted" }, `in vhost ${q.vhost}`)),
    h("div", { class: "stats" },
      stat("Messages", q.messages, "stream-messages"), stat("Size", bytes(q.message_bytes)),
      stat("First offset", offset(q.first_offset), "stream-first"), stat("Last offset", offset(q.last_offset), "stream-last"),
      stat("Segments", q.segments), stat("Consumers", q.consumers),
      stat("Publish /s", q.message_stats.publish_details.rate), stat("Deliver /s", q.message_stats.deliver_get_details.rate)),
    h("p", { class: "muted" }, `stream; arguments: ${JSON.stringify(q.arguments)}`),
    h("h2", {}, "Consumers"),
    table([
      { title: "Tag", cell: c => c.consumer_tag },
      { title: "Channel", cell: c => c.channel_details ? c.channel_details.name : "stream protocol" },
      { title: "Prefetch", num: true, cell: c => fmt(c.prefetch_count) },
      { title: "Next offset", num: true, cell: c => offset(c.offset) },
    ], q.consumer_details || [], "No consumers."),
    h("h2", {}, "Bindings"),
    table([
      { title: "From exchange", cell: b => b.source || "(default exchange)" },
      { title: "Routing key", cell: b => b.routing_key },
      { title: "Arguments", cell: b => JSON.stringify(b.arguments) },
    ], bindings),
    h("div", { class: "forms" },
      publishForm(q.vhost, "", q.name),
      h("div", { class: "card form" }, h("h2", {}, "Delete"),
        h("div", { class: "row" },
          h("button", { class: "danger", onclick: async () => { if (confirm(`Delete stream ${q.name}?`)) { await api("DELETE", base); location.hash = "#/queues"; } } }, "Delete stream")))),
  ];
}

function exchangeLink(e) {
  const name = e.name || "amq.default";
  return h("a", { href: `#/exchanges/${enc(e.vhost)}/${enc(name)}` }, e.name || "(AMQP default)");
}

async function exchangesPage() {
  const xs = await api("GET", "/api/exchanges");
  const vhosts = await api("GET", "/api/vhosts");
  return [
    h("h1", {}, `Exchanges (${xs.length})`),
    table([
      { title: "Vhost", cell: e => e.vhost },
      { title: "Name", cell: exchangeLink },
      { title: "Type", cell: e => e.type },
      { title: "Features", cell: e => [e.durable ? "D" : "", e.auto_delete ? "AD" : "", e.internal ? "I" : ""].filter(Boolean).join(" ") },
    ], xs),
    h("div", { class: "forms" }, form("Add an exchange", [
      field("Vhost", h("select", { name: "vhost" }, vhosts.map(v => h("option", {}, v.name)))),
      field("Name", h("input", { name: "name", required: true })),
      field("Type", h("select", { name: "type" }, ["direct", "fanout", "topic", "headers"].map(t => h("option", {}, t)))),
    ], "Add exchange", async f => {
      await api("PUT", `/api/exchanges/${enc(val(f, "vhost"))}/${enc(val(f, "name"))}`, { type: val(f, "type"), durable: true });
      render();
      return `Exchange ${val(f, "name")} declared.`;
    })),
  ];
}

async function exchangePage(vhost, name) {
  const base = `/api/exchanges/${enc(vhost)}/${enc(name)}`;
  const e = await api("GET", base);
  const bindings = await api("GET", `${base}/bindings/source`);
  const unbind = b => h("button", { class: "secondary", onclick: async () => {
    const kind = b.destination_type === "queue" ? "q" : "e";
    await api("DELETE", `/api/bindings/${enc(vhost)}/e/${enc(name)}/${kind}/${enc(b.destination)}/${enc(b.properties_key)}`);
    render();
  } }, "Unbind");
  return [
    h("h1", {}, `Exchange ${e.name || "(AMQP default)"} `, h("span", { class: "muted" }, `${e.type}, vhost ${e.vhost}`)),
    h("h2", {}, "Bindings from this exchange"),
    table([
      { title: "To", cell: b => b.destination_type === "queue" ? queueLink({ vhost, name: b.destination }) : b.destination },
      { title: "Kind", cell: b => b.destination_type },
      { title: "Routing key", cell: b => b.routing_key },
      { title: "Arguments", cell: b => JSON.stringify(b.arguments) },
      { title: "", cell: b => e.name ? unbind(b) : "" },
    ], bindings, "No bindings."),
    h("div", { class: "forms" },
      e.name ? form("Add a binding", [
        field("Destination kind", h("select", { name: "kind" }, h("option", { value: "q" }, "queue"), h("option", { value: "e" }, "exchange"))),
        field("Destination", h("input", { name: "destination", required: true })),
        field("Routing key", h("input", { name: "routing_key" })),
        field("Arguments (JSON)", h("input", { name: "arguments" })),
      ], "Bind", async f => {
        const args = val(f, "arguments").trim() ? JSON.parse(val(f, "arguments")) : {};
        await api("POST", `/api/bindings/${enc(vhost)}/e/${enc(name)}/${val(f, "kind")}/${enc(val(f, "destination"))}`, { routing_key: val(f, "routing_key"), arguments: args });
        render();
        return "Bound.";
      }) : null,
      publishForm(vhost, name, "")),
  ];
}

async function connectionsPage() {
  const cs = await api("GET", "/api/connections");
  return [
    h("h1", {}, `Connections (${cs.length})`),
    table([
      { title: "Name", cell: c => c.name },
      { title: "User", cell: c => c.user },
      { title: "Vhost", cell: c => c.vhost },
      { title: "Client", cell: c => [c.client_properties.product, c.client_properties.version].filter(Boolean).join(" ") },
      { title: "State", cell: c => c.state },
      { title: "Channels", num: true, cell: c => fmt(c.channels) },
      { title: "From client /s", num: true, cell: c => bytes(c.recv_oct_details.rate) },
      { title: "To client /s", num: true, cell: c => bytes(c.send_oct_details.rate) },
      { title: "", cell: c => h("button", { class: "danger", onclick: async () => {
        if (confirm(`Close connection ${c.name}?`)) { await api("DELETE", `/api/connections/${enc(c.name)}`); render(); }
      } }, "Close") },
    ], cs, "No connections."),
  ];
}

async function channelsPage() {
  const chs = await api("GET", "/api/channels");
  return [
    h("h1", {}, `Channels (${chs.length})`),
    table([
      { title: "Channel", cell: c => c.name },
      { title: "User", cell: c => c.user },
      { title: "Vhost", cell: c => c.vhost },
      { title: "Consumers", num: true, cell: c => fmt(c.consumer_count) },
      { title: "Prefetch", num: true, cell: c => fmt(c.prefetch_count) },
      { title: "Unacked", num: true, cell: c => fmt(c.messages_unacknowledged) },
    ], chs, "No channels."),
  ];
}

// ---- admin: users, vhosts, permissions (administrators only) ---------------

function deleteButton(what, path) {
  return h("button", { class: "danger", onclick: async () => {
    if (confirm(`Delete ${what}?`)) { await api("DELETE", path); render(); }
  } }, "Delete");
}

async function adminPage() {
  const [users, vhosts, perms, topics] = await Promise.all([
    api("GET", "/api/users"), api("GET", "/api/vhosts"),
    api("GET", "/api/permissions"), api("GET", "/api/topic-permissions")]);
  const userOptions = () => h("select", { name: "user" }, users.map(u => h("option", {}, u.name)));
  const vhostOptions = () => h("select", { name: "vhost" }, vhosts.map(v => h("option", {}, v.name)));
  return [
    h("h1", {}, "Admin"),
    h("h2", {}, `Users (${users.length})`),
    table([
      { title: "Name", cell: u => u.name },
      { title: "Tags", cell: u => u.tags.length ? u.tags.join(", ") : "(none: AMQP only)" },
      { title: "Vhosts", cell: u => perms.filter(p => p.user === u.name).map(p => p.vhost).join(", ") },
      { title: "", cell: u => deleteButton(`user ${u.name} (closing its connections)`, `/api/users/${enc(u.name)}`) },
    ], users, "No users."),
    h("h2", {}, `Virtual hosts (${vhosts.length})`),
    table([
      { title: "Name", cell: v => v.name },
      { title: "Messages", num: true, cell: v => fmt(v.messages) },
      { title: "Connections", num: true, cell: v => fmt(v.connections) },
      { title: "", cell: v => deleteButton(`vhost ${v.name} and everything in it`, `/api/vhosts/${enc(v.name)}`) },
    ], vhosts, "No vhosts."),
    h("h2", {}, `Permissions (${perms.length})`),
    table([
      { title: "User", cell: p => p.user },
      { title: "Vhost", cell: p => p.vhost },
      { title: "Configure", cell: p => p.configure },
      { title: "Write", cell: p => p.write },
      { title: "Read", cell: p => p.read },
      { title: "", cell: p => h("button", { class: "secondary", onclick: async () => {
        await api("DELETE", `/api/permissions/${enc(p.vhost)}/${enc(p.user)}`); render();
      } }, "Clear") },
    ], perms, "No permissions."),
    topics.length ? [h("h2", {}, `Topic permissions (${topics.length})`), table([
      { title: "User", cell: t => t.user },
      { title: "Vhost", cell: t => t.vhost },
      { title: "Exchange", cell: t => t.exchange },
      { title: "Write", cell: t => t.write },
      { title: "Read", cell: t => t.read },
    ], topics)] : null,
    h("div", { class: "forms" },
      form("Add a user", [
        field("Name", h("input", { name: "name", required: true })),
        field("Password", h("input", { name: "password", type: "password", required: true, autocomplete: "new-password" })),
        field("Tags (comma-separated: administrator, monitoring, policymaker, management)", h("input", { name: "tags" })),
      ], "Add user", async f => {
        await api("PUT", `/api/users/${enc(val(f, "name"))}`, { password: val(f, "password"), tags: val(f, "tags") });
        render();
        return `User ${val(f, "name")} saved.`;
      }),
      form("Add a virtual host", [
        field("Name", h("input", { name: "name", required: true })),
      ], "Add vhost", async f => {
        await api("PUT", `/api/vhosts/${enc(val(f, "name"))}`);
        render();
        return `Vhost ${val(f, "name")} added; you have every permission in it.`;
      }),
      form("Set permissions", [
        field("User", userOptions()),
        field("Vhost", vhostOptions()),
        field("Configure (regex)", h("input", { name: "configure", value: ".*" })),
        field("Write (regex)", h("input", { name: "write", value: ".*" })),
        field("Read (regex)", h("input", { name: "read", value: ".*" })),
      ], "Set permissions", async f => {
        const body = { configure: val(f, "configure"), write: val(f, "write"), read: val(f, "read") };
        await api("PUT", `/api/permissions/${enc(val(f, "vhost"))}/${enc(val(f, "user"))}`, body);
        render();
        return `Permissions of ${val(f, "user")} in ${val(f, "vhost")} set.`;
      })),
  ];
}

// ---- routing, login ------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  switch (parts[0]) {
    case "queues": return parts.length === 3 ? ["queues", () => queuePage(parts[1], parts[2])] : ["queues", queuesPage];
    case "exchanges": return parts.length === 3 ? ["exchanges", () => exchangePage(parts[1], parts[2])] : ["exchanges", exchangesPage];
    case "connections": return ["connections", connectionsPage];
    case "channels": return ["channels", channelsPage];
    case "admin": return ["admin", adminPage];
    default: return ["overview", overviewPage];
  }
}

async function render() {
  if (!auth()) return showLogin();
  const [name, page] = route();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === name);
  const target = document.getElementById("page");
  // Keep what the user is typing: only refresh pages without focused inputs.
  const active = document.activeElement;
  if (target.contains(active) && /INPUT|TEXTAREA|SELECT/.test(active.tagName) && render.auto) return;
  try {
    const nodes = await page();
    target.replaceChildren(...nodes.flat().filter(Boolean));
    target.dataset.page = name;
  } catch (err) {
    target.replaceChildren(h("p", { class: "error card" }, err.message));
  }
}

function schedule() {
  clearInterval(timer);
  timer = setInterval(() => { render.auto = true; render().finally(() => { render.auto = false; }); }, REFRESH_MS);
}

function showLogin() {
  clearInterval(timer);
  document.getElementById("nav").hidden = true;
  document.getElementById("page").replaceChildren();
  document.getElementById("whoami").replaceChildren();
  document.getElementById("login").hidden = false;
}

function logout() {
  sessionStorage.removeItem(AUTH_KEY);
  showLogin();
}

// The header for a logged-in user: the Admin tab only for administrators.
function showUser(me) {
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("nav-admin").hidden = !me.tags.includes("administrator");
  const tags = me.tags.length ? ` (${me.tags.join(", ")})` : "";
  document.getElementById("whoami").replaceChildren(`${me.name}${tags}`, h("button", { class: "secondary", onclick: logout }, "Log out"));
}

async function login(user, password) {
  sessionStorage.setItem(AUTH_KEY, btoa(`${user}:${password}`));
  const me = await api("GET", "/api/whoami");
  showUser(me);
  schedule();
  await render();
}

document.getElementById("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const err = document.getElementById("login-error");
  err.textContent = "";
  try {
    await login(document.getElementById("login-user").value, document.getElementById("login-password").value);
  } catch (ex) {
    sessionStorage.removeItem(AUTH_KEY);
    err.textContent = ex.message === "please log in"
      ? "Login failed: check the user and password (guest works from localhost only)."
      : `Login refused: ${ex.message} (the management UI needs a user with a management tag).`;
  }
});

window.addEventListener("hashchange", () => render());

if (auth()) {
  api("GET", "/api/whoami").then(me => {
    showUser(me);
    schedule();
    render();
  }).catch(() => showLogin());
} else {
  showLogin();
}
