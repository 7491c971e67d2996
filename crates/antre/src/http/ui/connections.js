// Connections and channels: their lists, and a page for each connection
// (properties, client, TLS, data rates, channels, close) and channel
// (prefetch, unacked, consumers).

import { h, api, enc, fmt, bytes, when, details, stat, actionButton, flash } from "./dom.js";
import { table, listing } from "./table.js";
import { lineChart, record, seriesOf } from "./chart.js";
import { queueLink } from "./queues.js";

function connectionLink(name) {
  return h("a", { href: `#/connections/${enc(name)}` }, name);
}

function channelLink(name) {
  return h("a", { href: `#/channels/${enc(name)}` }, name);
}

function client(c) {
  const p = c.client_properties || {};
  return [p.product, p.version].filter(Boolean).join(" ");
}

function closeButton(name, after) {
  return actionButton("Close", "danger", `Close connection ${name}?`, async () => {
    await api("DELETE", `/api/connections/${enc(name)}`);
    return after();
  });
}

export function connectionsPage(view) {
  const list = listing({
    id: "connections", path: "/api/connections", paged: true, what: "connections",
    columns: [
      { title: "Name", sort: "name", cell: c => connectionLink(c.name) },
      { title: "User", sort: "user", cell: c => c.user },
      { title: "Node", sort: "node", cell: c => c.node },
      { title: "Vhost", sort: "vhost", cell: c => c.vhost },
      { title: "Client", sort: "client_properties.product", cell: client },
      { title: "TLS", sort: "ssl", cell: c => c.ssl ? c.ssl_protocol || "yes" : "no" },
      { title: "State", sort: "state", cell: c => c.state },
      { title: "Channels", sort: "channels", num: true, cell: c => fmt(c.channels) },
      { title: "From client /s", sort: "recv_oct_details.rate", num: true, cell: c => bytes(c.recv_oct_details.rate) },
      { title: "To client /s", sort: "send_oct_details.rate", num: true, cell: c => bytes(c.send_oct_details.rate) },
      { title: "", cell: c => closeButton(c.name, async () => { await list.update(); return `Connection ${c.name} closed.`; }) },
    ],
  });
  return [h("h1", {}, "Connections"), view.add(list)];
}

function clientProperties(props) {
  const rows = Object.entries(props || {}).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]);
  return details(rows.length ? rows : [["(none)", ""]]);
}

export function connectionPage(view, name) {
  const base = `/api/connections/${enc(name)}`;
  view.load(async () => {
    const [c, channels] = await Promise.all([api("GET", base), api("GET", `${base}/channels`)]);
    const hist = record(`connection ${name}`, { recv: c.recv_oct_details.rate, send: c.send_oct_details.rate });
    return { c, channels, hist };
  });
  return [
    h("h1", {}, "Connection ", h("span", { class: "muted" }, name)),
    view.live(({ c }) => [
      stat("Channels", c.channels, "connection-channels"),
      stat("From client /s", bytes(c.recv_oct_details.rate)), stat("To client /s", bytes(c.send_oct_details.rate)),
      stat("Received", bytes(c.recv_oct)), stat("Sent", bytes(c.send_oct)),
    ], { class: "stats" }),
    h("div", { class: "columns" },
      h("section", {}, h("h2", {}, "Details"), view.live(({ c }) => details([
        ["User", c.user], ["Vhost", c.vhost], ["State", c.state], ["Protocol", c.protocol],
        ["Client address", `${c.peer_host}:${c.peer_port}`], ["Server address", `${c.host}:${c.port}`],
        ["Authentication", c.auth_mechanism], ["Connected at", when(c.connected_at)],
        ["Heartbeat", c.timeout ? `${c.timeout} s` : "off"], ["Frame max", fmt(c.frame_max)], ["Channel max", fmt(c.channel_max)],
        ["TLS", c.ssl ? `${c.ssl_protocol}, ${c.ssl_cipher}` : "no"],
        c.peer_cert_subject ? ["Client certificate", c.peer_cert_subject] : null,
      ]), { id: "connection-details" })),
      h("section", {}, h("h2", {}, "Client properties"), view.live(({ c }) => clientProperties(c.client_properties)))),
    view.live(({ hist }) => lineChart("Data rates", [
      seriesOf(hist, "recv", "from client", "#0b6bcb"), seriesOf(hist, "send", "to client", "#1e8449"),
    ], { unit: " B/s", integer: true, empty: hist.length < 2 ? "Samples appear as this page refreshes" : undefined }), { class: "charts" }),
    h("h2", {}, "Channels"),
    view.live(({ channels }) => table([
      { title: "Channel", cell: ch => channelLink(ch.name) },
      { title: "Number", num: true, cell: ch => fmt(ch.number) },
      { title: "Consumers", num: true, cell: ch => fmt(ch.consumer_count) },
      { title: "Prefetch", num: true, cell: ch => fmt(ch.prefetch_count) },
      { title: "Unacked", num: true, cell: ch => fmt(ch.messages_unacknowledged) },
    ], channels, "No channels open.")),
    h("div", { class: "card form" }, h("h2", {}, "Close"), h("div", { class: "row" },
      closeButton(name, () => {
        flash(`Connection ${name} closed.`, "notice", "#/connections");
        location.hash = "#/connections";
      }))),
  ];
}

export function channelsPage(view) {
  const list = listing({
    id: "channels", path: "/api/channels", paged: true, what: "channels",
    columns: [
      { title: "Channel", sort: "name", cell: c => channelLink(c.name) },
      { title: "User", sort: "user", cell: c => c.user },
      { title: "Node", sort: "node", cell: c => c.node },
      { title: "Vhost", sort: "vhost", cell: c => c.vhost },
      { title: "State", sort: "state", cell: c => c.state },
      { title: "Consumers", sort: "consumer_count", num: true, cell: c => fmt(c.consumer_count) },
      { title: "Prefetch", sort: "prefetch_count", num: true, cell: c => fmt(c.prefetch_count) },
      { title: "Unacked", sort: "messages_unacknowledged", num: true, cell: c => fmt(c.messages_unacknowledged) },
    ],
  });
  return [h("h1", {}, "Channels"), view.add(list)];
}

export function channelPage(view, name) {
  view.load(() => api("GET", `/api/channels/${enc(name)}`));
  return [
    h("h1", {}, "Channel ", h("span", { class: "muted" }, name)),
    view.live(ch => [
      stat("Consumers", ch.consumer_count, "channel-consumers"), stat("Prefetch", ch.prefetch_count),
      stat("Global prefetch", ch.global_prefetch_count, "channel-global-prefetch"),
      stat("Unacked", ch.messages_unacknowledged, "channel-unacked"),
      stat("Unconfirmed", ch.messages_unconfirmed, "channel-unconfirmed"),
      stat("Uncommitted", ch.messages_uncommitted, "channel-uncommitted"),
      stat("Publish /s", ch.message_stats.publish_details.rate),
      stat("Deliver /s", ch.message_stats.deliver_get_details.rate),
      stat("Ack /s", ch.message_stats.ack_details.rate),
    ], { class: "stats" }),
    view.live(ch => details([
      ["Connection", connectionLink(ch.connection_details.name)], ["Number", fmt(ch.number)],
      ["User", ch.user], ["Vhost", ch.vhost], ["State", ch.state],
      ["Client address", `${ch.connection_details.peer_host}:${ch.connection_details.peer_port}`],
    ])),
    h("h2", {}, "Consumers"),
    view.live(ch => table([
      { title: "Tag", cell: c => c.consumer_tag },
      { title: "Queue", cell: c => queueLink(c.queue) },
      { title: "Ack required", cell: c => c.ack_required ? "yes" : "no" },
      { title: "Exclusive", cell: c => c.exclusive ? "yes" : "no" },
      { title: "Prefetch", num: true, cell: c => fmt(c.prefetch_count) },
      { title: "Unacked", num: true, cell: c => fmt(c.messages_unacknowledged) },
    ], ch.consumer_details || [], "No consumers on this channel.")),
  ];
}
