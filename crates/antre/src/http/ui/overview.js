// The overview: broker-wide totals, rates and charts.

import { h, api, stat, bytes } from "./dom.js";
import { lineChart, ratesOf, levelsOf } from "./chart.js";

export function overviewPage(view) {
  view.load(() => api("GET", "/api/overview?msg_rates_age=600&lengths_age=600"));
  return [
    view.live(o => h("h1", {}, `Overview · ${o.product_name} ${o.product_version} on ${o.node}`)),
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
    view.live(o => h("p", { class: "muted" }, `Rates are sampled every ${o.sample_interval} s. Listeners: `,
      o.listeners.map(l => `${l.protocol} ${l.ip_address}:${l.port}`).join(", "))),
  ];
}
