// Queues: the list (sorted, filtered and paged by the broker), adding one,
// and a queue's page with its charts, consumers, bindings, Get, publish,
// purge and delete.

import { h, api, enc, fmt, bytes, stat, field, checkbox, select, setOptions, form, val, checked, actionButton, flash, isAdmin } from "./dom.js";
import { lineChart, record, seriesOf } from "./chart.js";
import { table, listing } from "./table.js";
import { argsEditor } from "./args.js";

export const QUEUE_ARGS = [
  ["x-message-ttl", "number", "ms a message may wait in the queue"],
  ["x-expires", "number", "ms unused before the queue is deleted"],
  ["x-max-length", "number", "most ready messages"],
  ["x-max-length-bytes", "number", "most bytes of ready bodies"],
  ["x-overflow", "string", "drop-head, reject-publish or reject-publish-dlx"],
  ["x-dead-letter-exchange", "string", "where dead letters go"],
  ["x-dead-letter-routing-key", "string", "their routing key"],
  ["x-max-priority", "number", "highest message priority (0-255)"],
  ["x-delivery-limit", "number", "redeliveries before dead-lettering"],
  ["x-single-active-consumer", "boolean", "one consumer at a time"],
  ["x-consumer-timeout", "number", "ms a delivery may stay unacked"],
  ["x-message-deduplication", "boolean", "skip messages whose key is queued"],
  ["x-queue-type", "string", "classic, quorum or stream"],
];

export function queueLink(q) {
  return h("a", { href: `#/queues/${enc(q.vhost)}/${enc(q.name)}` }, q.name);
}

function features(q) {
  const args = Object.keys(q.arguments || {});
  return [q.durable ? "D" : "", q.auto_delete ? "AD" : "", q.exclusive ? "Excl" : "", args.length ? "Args" : ""]
    .filter(Boolean).map(f => h("abbr", { class: "tag", title: { D: "durable", AD: "auto-delete", Excl: "exclusive", Args: args.join(", ") }[f] }, f));
}

/// Where a queue lives: its node (a replicated queue's leader) and, as
/// RabbitMQ's list shows it, "+N" for its other members, marked when not
/// all of them are online; hovering names them.
function nodeCell(q) {
  if (!Array.isArray(q.members) || q.members.length < 2) return q.node || "";
  const online = q.online || [];
  const all = q.members.every(m => online.includes(m));
  const title = `members ${q.members.join(", ")}; online ${online.join(", ") || "none"}`;
  return [q.node || "", " ", h("span", { class: all ? "tag" : "tag warn", title }, `+${q.members.length - 1}`)];
}

/// The vhost names, for forms.
export async function vhostNames() {
  return (await api("GET", "/api/vhosts?columns=name")).map(v => v.name);
}

export async function queuesPage(view) {
  const vhosts = await vhostNames();
  const list = listing({
    id: "queues", path: "/api/queues", paged: true, what: "queues", sort: "",
    columns: [
      { title: "Vhost", sort: "vhost", cell: q => q.vhost },
      { title: "Name", sort: "name", cell: queueLink },
      { title: "Type", sort: "type", cell: q => q.type || "classic" },
      { title: "Node", sort: "node", cell: nodeCell },
      { title: "Features", cell: features },
      { title: "Ready", sort: "messages_ready", num: true, cell: q => fmt(q.messages_ready) },
      { title: "Unacked", sort: "messages_unacknowledged", num: true, cell: q => fmt(q.messages_unacknowledged) },
      { title: "Total", sort: "messages", num: true, cell: q => fmt(q.messages) },
      { title: "Consumers", sort: "consumers", num: true, cell: q => fmt(q.consumers) },
      { title: "Publish /s", sort: "message_stats.publish_details.rate", num: true, cell: q => fmt(q.message_stats.publish_details.rate) },
      { title: "Deliver /s", sort: "message_stats.deliver_get_details.rate", num: true, cell: q => fmt(q.message_stats.deliver_get_details.rate) },
      { title: "Ack /s", sort: "message_stats.ack_details.rate", num: true, cell: q => fmt(q.message_stats.ack_details.rate) },
    ],
  });
  const args = argsEditor("Arguments", QUEUE_ARGS);
  return [
    h("h1", {}, "Queues"),
    view.add(list),
    h("div", { class: "forms" }, form("Add a queue", [
      field("Vhost", select("vhost", vhosts)),
      field("Name", h("input", { name: "name", required: true })),
      field("Durability", select("durable", [["true", "durable"], ["false", "transient"]])),
      checkbox("auto_delete", "Auto-delete (when its last consumer leaves)"),
      args.el,
    ], "Add queue", async f => {
      const body = { durable: val(f, "durable") === "true", auto_delete: checked(f, "auto_delete"), arguments: args.value() };
      await api("PUT", `/api/queues/${enc(val(f, "vhost"))}/${enc(val(f, "name"))}`, body);
      await view.refresh();
      return `Queue ${val(f, "name")} declared.`;
    }, { id: "add-queue", class: "card form wide" })),
  ];
}

/// A publish form, for an exchange's page or (through the default
/// exchange) a queue's.
export function publishForm(view, vhost, exchange, routingKey) {
  return form("Publish a message", [
    field("Routing key", h("input", { name: "routing_key", value: routingKey || "" })),
    field("Delivery mode", select("delivery_mode", [["1", "1 - transient"], ["2", "2 - persistent"]])),
    field("Headers (JSON)", h("input", { name: "headers", placeholder: '{"x-delay": 5000}' })),
    field("Properties (JSON)", h("input", { name: "properties", placeholder: '{"message_id": "m-1", "expiration": "60000"}' })),
    field("Payload", h("textarea", { name: "payload", rows: 4 })),
  ], "Publish", async f => {
    const parse = (name, what) => {
      const text = val(f, name).trim();
      if (!text) return undefined;
      try { return JSON.parse(text); } catch (e) { throw new Error(`${what} is not valid JSON: ${e.message}`); }
    };
    const properties = { ...(parse("properties", "Properties") || {}), delivery_mode: Number(val(f, "delivery_mode")) };
    const headers = parse("headers", "Headers");
    if (headers) properties.headers = headers;
    const r = await api("POST", `/api/exchanges/${enc(vhost)}/${enc(exchange || "amq.default")}/publish`, {
      routing_key: val(f, "routing_key"), payload: val(f, "payload"), payload_encoding: "string", properties,
    });
    await view.refresh();
    return r.routed ? "Message published." : "Message published, but it was not routed to any queue.";
  }, { id: "publish" });
}

function getForm(base) {
  const out = h("div", { id: "get-result", "aria-live": "polite" });
  const f = form("Get messages", [
    h("p", { class: "muted" }, "Getting a message takes it off the queue; with Nack, requeue it goes back, marked redelivered."),
    h("div", { class: "row" },
      field("Messages", h("input", { name: "count", type: "number", value: 1, min: 1 })),
      field("Ack mode", select("ackmode", [
        ["ack_requeue_true", "Nack, requeue"],
        ["ack_requeue_false", "Ack, remove from queue"],
        ["reject_requeue_false", "Reject, dead-letter or drop"]])),
      field("Encoding", select("encoding", [["auto", "auto: string or base64"], ["base64", "base64"]])),
      field("Truncate at (bytes)", h("input", { name: "truncate", type: "number", min: 1, placeholder: "no limit" }))),
  ], "Get messages", async f => {
    const body = { count: Number(val(f, "count")), ackmode: val(f, "ackmode"), encoding: val(f, "encoding") };
    if (val(f, "truncate")) body.truncate = Number(val(f, "truncate"));
    const msgs = await api("POST", `${base}/get`, body);
    out.replaceChildren(...msgs.map((m, i) => h("div", { class: "message" },
      h("div", { class: "muted" }, `Message ${i + 1}: exchange "${m.exchange}", routing key "${m.routing_key}"${m.redelivered ? ", redelivered" : ""}, ${m.payload_bytes} bytes (${m.payload_encoding}), ${m.message_count} left in the queue`),
      h("div", { class: "muted" }, `properties: ${JSON.stringify(m.properties)}`),
      h("pre", {}, m.payload))));
    return msgs.length ? `${msgs.length} message(s) got.` : "The queue is empty.";
  }, { id: "get" });
  // The messages show under the form's notice, and stay until the next Get.
  f.appendChild(out);
  return f;
}

function bindForm(view, vhost, name) {
  const args = argsEditor("Binding arguments", [["x-match", "string", "headers exchanges: all or any"]]);
  return form("Bind from an exchange", [
    field("Exchange", h("input", { name: "source", required: true })),
    field("Routing key", h("input", { name: "routing_key" })),
    args.el,
  ], "Bind", async f => {
    await api("POST", `/api/bindings/${enc(vhost)}/e/${enc(val(f, "source"))}/q/${enc(name)}`, { routing_key: val(f, "routing_key"), arguments: args.value() });
    await view.refresh();
    return `Bound from ${val(f, "source")}.`;
  }, { id: "bind" });
}

function unbindButton(view, b) {
  return actionButton("Unbind", "secondary", null, async () => {
    await api("DELETE", `/api/bindings/${enc(b.vhost)}/e/${enc(b.source)}/q/${enc(b.destination)}/${enc(b.properties_key)}`);
    await view.refresh();
    return `Unbound from ${b.source}.`;
  });
}

function offsetText(o) {
  return o === null || o === undefined ? "-" : fmt(o);
}

/// A stream's figures: messages stay after they are read, so offsets and
/// size instead of ready and unacked.
function streamStats(q) {
  return [
    stat("Messages", q.messages, "stream-messages"), stat("Size", bytes(q.message_bytes)),
    stat("First offset", offsetText(q.first_offset), "stream-first"),
    stat("Last offset", offsetText(q.last_offset), "stream-last"),
    stat("Segments", q.segments), stat("Consumers", q.consumers, "queue-consumers"),
    stat("Publish /s", q.message_stats.publish_details.rate), stat("Deliver /s", q.message_stats.deliver_get_details.rate),
  ];
}

/// States a member's row shows as a fault: its node is down, or it runs
/// but has no replica of the queue (or did not answer in time).
const MEMBER_FAULTS = ["nodedown", "noproc"];

/// A quorum queue's or stream's members on a cluster, each with the Raft
/// figures it reports (`antre queues quorum-status`); an administrator
/// removes a member here. `members` is null when they could not be asked:
/// the queue's own list is shown then.
function membersTable(view, base, q, members) {
  const rows = members || q.members.map(node => ({ node, raft_state: "–" }));
  const columns = [
    { title: "Node", cell: m => [m.node, m.node === q.leader ? [" ", h("span", { class: "tag" }, "leader")] : null] },
    { title: "Raft state", cell: m => MEMBER_FAULTS.includes(m.raft_state) ? h("span", { class: "error" }, m.raft_state) : m.raft_state },
    { title: "Term", num: true, cell: m => fmt(m.term) },
    { title: "Log index", num: true, cell: m => fmt(m.last_log_index) },
    { title: "Written", num: true, cell: m => fmt(m.last_written_index) },
    { title: "Committed", num: true, cell: m => fmt(m.commit_index) },
    { title: "Applied", num: true, cell: m => fmt(m.last_applied_index) },
    { title: "Snapshot", num: true, cell: m => fmt(m.snapshot_index) },
    { title: "Commit latency", num: true, cell: m => typeof m.commit_latency_ms === "number" ? `${m.commit_latency_ms.toFixed(2)} ms` : "–" },
    isAdmin() ? { title: "", cell: m => q.members.length < 2 ? null :
      actionButton("Remove", "danger", `Remove ${q.name}'s member on ${m.node}? Its replica there is deleted; the other members keep every message.`,
        async () => {
          await api("DELETE", `${base}/members/${enc(m.node)}`);
          await view.refresh();
          return `${m.node} is no longer a member of ${q.name}.`;
        }) } : null,
  ].filter(Boolean);
  const online = q.online || [];
  return [
    h("h2", {}, `Members (${q.members.length})`),
    h("p", { class: "muted", id: "queue-leader" }, q.leader ? `Leader ${q.leader}, elected in term ${fmt(q.leader_term)}; ${online.length} of ${q.members.length} online.` : `No leader; ${online.length} of ${q.members.length} online.`),
    table(columns, rows),
  ];
}

/// An administrator's form to add a member on a running node that has
/// none (`rabbitmq-queues add_member`); shown only for a replicated queue.
function addMemberForm(view, base, name) {
  const node = select("node", []);
  const f = form("Add a member", [
    h("p", { class: "muted" }, "The new member copies the queue's log from the leader; it votes once it has caught up."),
    field("Node", node),
  ], "Add member", async f => {
    // Read before the refresh, which takes the new member off the list.
    const chosen = val(f, "node");
    if (!chosen) throw new Error("Every running node already has a member of this queue.");
    await api("POST", `${base}/members/${enc(chosen)}`);
    await view.refresh();
    return `${chosen} is now a member of ${name}.`;
  }, { id: "add-member", hidden: true });
  view.each(data => {
    const q = data && data.q;
    f.hidden = !(q && Array.isArray(q.members) && data.nodes);
    if (!f.hidden) setOptions(node, data.nodes.filter(n => n.running && !q.members.includes(n.name)).map(n => n.name));
  });
  return f;
}

export async function queuePage(view, vhost, name) {
  const base = `/api/queues/${enc(vhost)}/${enc(name)}`;
  view.load(async () => {
    const [q, bindings] = await Promise.all([api("GET", base), api("GET", `${base}/bindings`)]);
    // A replicated queue's members report their own figures; only an
    // administrator may change them, so only then are the nodes listed.
    const replicated = Array.isArray(q.members);
    const [members, nodes] = replicated ? await Promise.all([
      api("GET", `${base}/members`).catch(() => null),
      isAdmin() ? api("GET", "/api/nodes").catch(() => null) : null,
    ]) : [null, null];
    const ms = q.message_stats;
    const hist = record(`queue ${vhost} ${name}`, {
      ready: q.messages_ready, unacked: q.messages_unacknowledged,
      publish: ms.publish_details.rate, deliver: ms.deliver_get_details.rate,
      ack: ms.ack_details ? ms.ack_details.rate : 0, redeliver: ms.redeliver_details ? ms.redeliver_details.rate : 0,
    });
    return { q, bindings, hist, members, nodes };
  });
  return [
    h("h1", {}, `Queue ${name} `, h("span", { class: "muted" }, `in vhost ${vhost}`)),
    view.live(({ q }) => q.type === "stream" ? streamStats(q) : [
      stat("Ready", q.messages_ready, "queue-ready"), stat("Unacked", q.messages_unacknowledged, "queue-unacked"),
      stat("Total", q.messages, "queue-total"), stat("Consumers", q.consumers, "queue-consumers"),
      stat("Publish /s", q.message_stats.publish_details.rate), stat("Deliver /s", q.message_stats.deliver_get_details.rate),
      stat("Ack /s", q.message_stats.ack_details.rate), stat("Ready bytes", bytes(q.message_bytes_ready)),
      stat("Bytes", bytes(q.message_bytes), "queue-bytes"), stat("Persistent", q.messages_persistent, "queue-persistent"),
      stat("In memory", q.messages_ram, "queue-ram"),
      // The share of recent time its consumers could take its messages.
      stat("Consumer utilisation", q.consumers ? `${Math.round(q.consumer_utilisation * 100)}%` : "–", "queue-utilisation"),
      // A quorum queue's dead letters kept until a queue holds them (at-least-once).
      q.messages_dlx ? stat("Dead letters kept", q.messages_dlx, "queue-dlx") : null,
    ], { class: "stats" }),
    view.live(({ q }) => h("p", { class: "muted" },
      `${q.type || "classic"}, ${q.durable ? "durable" : "transient"}${q.auto_delete ? ", auto-delete" : ""}${q.exclusive ? ", exclusive" : ""}; arguments: ${JSON.stringify(q.arguments)}`)),
    view.live(({ hist }) => {
      const empty = "Samples appear as this page refreshes";
      return [
        lineChart("Message rates", [
          seriesOf(hist, "publish", "publish", "#0b6bcb"), seriesOf(hist, "deliver", "deliver / get", "#1e8449"),
          seriesOf(hist, "ack", "ack", "#d68910"), seriesOf(hist, "redeliver", "redeliver", "#8e44ad"),
        ], { unit: "/s", empty: hist.length < 2 ? empty : undefined }),
        lineChart("Queued messages", [
          seriesOf(hist, "ready", "ready", "#0b6bcb"), seriesOf(hist, "unacked", "unacked", "#c0392b"),
        ], { integer: true }),
      ];
    }, { class: "charts", id: "queue-charts" }),
    view.live(({ q, members }) => Array.isArray(q.members) ? membersTable(view, base, q, members) : null, { id: "members" }),
    h("h2", {}, "Consumers"),
    view.live(({ q }) => table([
      { title: "Tag", cell: c => c.consumer_tag },
      { title: "Channel", cell: c => c.channel_details ? h("a", { href: `#/channels/${enc(c.channel_details.name)}` }, c.channel_details.name) : "" },
      { title: "Ack required", cell: c => c.ack_required ? "yes" : "no" },
      { title: "Exclusive", cell: c => c.exclusive ? "yes" : "no" },
      { title: "Prefetch", num: true, cell: c => fmt(c.prefetch_count) },
      { title: "Unacked", num: true, cell: c => fmt(c.messages_unacknowledged) },
      ...(q.type === "stream" ? [{ title: "Next offset", num: true, cell: c => offsetText(c.offset) }] : []),
    ], q.consumer_details || [], "No consumers.")),
    h("h2", {}, "Bindings"),
    view.live(({ bindings }) => table([
      { title: "From exchange", cell: b => b.source ? h("a", { href: `#/exchanges/${enc(b.vhost)}/${enc(b.source)}` }, b.source) : "(default exchange)" },
      { title: "Routing key", cell: b => b.routing_key },
      { title: "Arguments", cell: b => JSON.stringify(b.arguments) },
      { title: "", cell: b => b.source ? unbindButton(view, b) : "" },
    ], bindings)),
    h("div", { class: "forms" },
      getForm(base),
      publishForm(view, vhost, "", name),
      bindForm(view, vhost, name),
      isAdmin() ? addMemberForm(view, base, name) : null,
      h("div", { class: "card form" }, h("h2", {}, "Purge or delete"),
        h("div", { class: "row" },
          actionButton("Purge messages", "secondary", `Purge queue ${name}?`, async () => {
            await api("DELETE", `${base}/contents`);
            await view.refresh();
            return `Queue ${name} purged.`;
          }),
          actionButton("Delete queue", "danger", `Delete queue ${name}?`, async () => {
            await api("DELETE", base);
            flash(`Queue ${name} deleted.`, "notice", "#/queues");
            location.hash = "#/queues";
          })))),
  ];
}
