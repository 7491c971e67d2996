// The overview: broker-wide totals, rates and charts, and the nodes of the
// cluster (one row for a single node).

import { h, api, stat, bytes, fmt, enc, isAdmin, actionButton } from "./dom.js";
import { lineChart, ratesOf, levelsOf } from "./chart.js";
import { table } from "./table.js";

/// "3 d 4 h", "12 min": an uptime in milliseconds.
function uptime(ms) {
  if (ms === undefined || ms === null) return "–";
  const min = Math.floor(ms / 60000), hours = Math.floor(min / 60), days = Math.floor(hours / 24);
  if (days) return `${days} d ${hours % 24} h`;
  if (hours) return `${hours} h ${min % 60} min`;
  return `${min} min`;
}

/// A figure with its limit and a warning when its alarm is raised.
function withAlarm(value, limit, alarm) {
  return [value, limit ? h("span", { class: "muted" }, ` / ${limit}`) : null, alarm ? h("span", { class: "error" }, " ⚠ alarm") : null];
}

/// A running node's state: "running", or in maintenance mode (`antre
/// cluster drain`) what that means for its clients and queues.
function drained(n) {
  if (!n.being_drained) return "running";
  return [h("span", { class: "tag" }, "drained"),
    h("div", { class: "hint reason" }, "maintenance mode: takes no clients and leads no queue until revived")];
}

/// The nodes table: every member of the cluster, its state as this node
/// sees it, and the figures it reports (memory, disk, connections, quorum
/// queue leaders). An administrator can forget a node that is down.
function nodesTable(nodes) {
  const clustered = nodes.some(n => n.cluster_member);
  const columns = [
    { title: "Node", cell: n => [n.name, n.this_node ? [" ", h("span", { class: "tag" }, "this node")] : null,
      n.metadata_leader ? [" ", h("span", { class: "tag" }, "metadata leader")] : null] },
    clustered ? { title: "Member", cell: n => n.cluster_member } : null,
    { title: "State", cell: n => n.running ? drained(n) : [h("span", { class: "error" }, "down"),
      n.unreachable_reason ? h("div", { class: "hint reason" }, n.unreachable_reason) : null] },
    { title: "Memory", num: true, cell: n => withAlarm(bytes(n.mem_used), n.mem_limit ? bytes(n.mem_limit) : null, n.mem_alarm) },
    { title: "Disk free", num: true, cell: n => withAlarm(bytes(n.disk_free), null, n.disk_free_alarm) },
    { title: "Connections", num: true, cell: n => fmt(n.connections) },
    { title: "Queues", num: true, cell: n => fmt(n.queues) },
    clustered ? { title: "Quorum leaders", num: true, cell: n => n.quorum_replicas === undefined ? "–" : `${fmt(n.quorum_leaders)} of ${fmt(n.quorum_replicas)}` } : null,
    { title: "Uptime", num: true, cell: n => uptime(n.uptime) },
    clustered && isAdmin() ? { title: "", cell: n => n.running ? null :
      actionButton("Forget", "danger", `Remove ${n.name} from the cluster? Its quorum queue replicas and classic queues are lost to the cluster.`,
        async () => { await api("DELETE", `/api/cluster/members/${enc(n.name)}`); return `${n.name} was removed from the cluster.`; }) } : null,
  ].filter(Boolean);
  return [h("h2", {}, clustered ? `Cluster nodes (${nodes.length})` : "Node"), h("div", { class: "listing" }, table(columns, nodes))];
}

export function overviewPage(view) {
  view.load(async () => {
    // A user without the monitoring tag may not list nodes: the overview
    // still shows, without the table.
    const [o, nodes] = await Promise.all([
      api("GET", "/api/overview?msg_rates_age=600&lengths_age=600"),
      api("GET", "/api/nodes").catch(() => null),
    ]);
    o.nodes = nodes;
    return o;
  });
  return [
    view.live(o => h("h1", {}, `Overview · ${o.product_name} ${o.product_version} on ${o.node}`,
      o.cluster_name && o.cluster_name !== o.node ? h("span", { class: "muted", id: "cluster-name" }, ` · cluster ${o.cluster_name}`) : null)),
    view.live(o => {
      const raised = [o.disk_free_alarm ? "free disk space is low" : null, o.mem_alarm ? "memory use is high" : null].filter(Boolean);
      return raised.length
        ? h("p", { class: "error card", role: "alert", id: "alarms" }, `Resource alarm: ${raised.join(", ")}. Publishers are blocked until it clears.`)
        : null;
    }),
    view.live(o => {
      const ms = o.message_stats, qt = o.queue_totals, ot = o.object_totals;
      return [
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
        stat(o.mem_limit ? `Memory (limit ${bytes(o.mem_limit)})` : "Memory", bytes(o.mem_used) + (o.mem_alarm ? " ⚠ alarm" : "")),
        stat("Disk free", bytes(o.disk_free) + (o.disk_free_alarm ? " ⚠ alarm" : "")),
      ];
    }, { class: "stats", id: "overview-stats" }),
    view.live(o => {
      const ms = o.message_stats, qt = o.queue_totals;
      return [
        lineChart("Message rates", [
          { name: "publish", color: "#0b6bcb", points: ratesOf(ms.publish_details.samples) },
          { name: "deliver", color: "#1e8449", points: ratesOf(ms.deliver_get_details.samples) },
          { name: "ack", color: "#d68910", points: ratesOf(ms.ack_details.samples) },
        ], { unit: "/s" }),
        lineChart("Queued messages", [
          { name: "ready", color: "#0b6bcb", points: levelsOf(qt.messages_ready_details.samples) },
          { name: "unacked", color: "#c0392b", points: levelsOf(qt.messages_unacknowledged_details.samples) },
        ], { integer: true }),
      ];
    }, { class: "charts" }),
    view.live(o => o.nodes ? nodesTable(o.nodes) : null, { id: "nodes" }),
    view.live(o => h("p", { class: "muted" }, `Rates are sampled every ${o.sample_interval} s. Listeners: `,
      o.listeners.map(l => `${l.protocol} ${l.ip_address}:${l.port}`).join(", "))),
  ];
}
