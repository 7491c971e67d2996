// Exchanges: the list, adding one (every type antre has, with its
// options), and an exchange's page with its bindings, binding, publishing
// and deleting.

import { h, api, enc, field, checkbox, select, form, val, checked, details, actionButton, flash, fmt } from "./dom.js";
import { table, listing } from "./table.js";
import { argsEditor } from "./args.js";
import { queueLink, publishForm, vhostNames } from "./queues.js";

const ROUTING_TYPES = ["direct", "fanout", "topic", "headers"];
const TYPES = [...ROUTING_TYPES, "x-delayed-message", "x-message-deduplication"];

export function exchangeLink(e) {
  const name = e.name || "amq.default";
  return h("a", { href: `#/exchanges/${enc(e.vhost)}/${enc(name)}` }, e.name || "(AMQP default)");
}

// What channels published through it, as RabbitMQ shows it: present
// once something was published there.
const flow = (e, key) => (e.message_stats || {})[key] || 0;
const flowRate = (e, key) => ((e.message_stats || {})[`${key}_details`] || { rate: 0 }).rate;

function features(e) {
  const args = Object.keys(e.arguments || {});
  return [e.durable ? ["D", "durable"] : null, e.auto_delete ? ["AD", "auto-delete"] : null, e.internal ? ["I", "internal"] : null,
    args.length ? ["Args", args.map(k => `${k}: ${JSON.stringify(e.arguments[k])}`).join(", ")] : null]
    .filter(Boolean).map(([f, title]) => h("abbr", { class: "tag", title }, f));
}

/// The add-exchange form: the type decides which extra fields show.
function addExchangeForm(view, vhosts) {
  const args = argsEditor("Arguments", [["alternate-exchange", "string", "where unroutable messages go"]]);
  const delayed = h("div", { class: "row", hidden: true },
    field("Routes as (x-delayed-type)", select("delayed_type", ROUTING_TYPES)),
    h("p", { class: "hint" }, "Messages with an x-delay header (ms) are held that long, then routed."));
  const dedup = h("div", { class: "row", hidden: true },
    field("Cache size (x-cache-size)", h("input", { name: "cache_size", type: "number", min: 1, placeholder: "no limit" })),
    field("Cache TTL ms (x-cache-ttl)", h("input", { name: "cache_ttl", type: "number", min: 1, placeholder: "no expiry" })),
    h("p", { class: "hint" }, "The key is the x-deduplication-header header, else the message-id property."));
  const dedupBox = checkbox("dedup", "Deduplicate (x-message-deduplication)");
  const type = select("type", TYPES, { onchange: () => show() });
  function show() {
    const t = type.value;
    delayed.hidden = t !== "x-delayed-message";
    const dedupType = t === "x-message-deduplication";
    dedupBox.hidden = dedupType;
    dedup.hidden = !(dedupType || dedupBox.querySelector("input").checked);
  }
  dedupBox.querySelector("input").addEventListener("change", show);
  return form("Add an exchange", [
    field("Vhost", select("vhost", vhosts)),
    field("Name", h("input", { name: "name", required: true })),
    field("Type", type),
    delayed,
    h("div", { class: "row" },
      field("Durability", select("durable", [["true", "durable"], ["false", "transient"]])),
      checkbox("auto_delete", "Auto-delete (when its last binding goes)"),
      checkbox("internal", "Internal (only other exchanges publish to it)")),
    dedupBox,
    dedup,
    args.el,
  ], "Add exchange", async f => {
    const t = val(f, "type");
    const a = args.value();
    if (t === "x-delayed-message") a["x-delayed-type"] = val(f, "delayed_type");
    if (t !== "x-message-deduplication" && checked(f, "dedup")) a["x-message-deduplication"] = true;
    if (!dedup.hidden) {
      if (val(f, "cache_size")) a["x-cache-size"] = Number(val(f, "cache_size"));
      if (val(f, "cache_ttl")) a["x-cache-ttl"] = Number(val(f, "cache_ttl"));
    }
    await api("PUT", `/api/exchanges/${enc(val(f, "vhost"))}/${enc(val(f, "name"))}`, {
      type: t, durable: val(f, "durable") === "true", auto_delete: checked(f, "auto_delete"), internal: checked(f, "internal"), arguments: a,
    });
    await view.refresh();
    return `Exchange ${val(f, "name")} declared.`;
  }, { id: "add-exchange", class: "card form wide" });
}

export async function exchangesPage(view) {
  const vhosts = await vhostNames();
  const list = listing({
    id: "exchanges", path: "/api/exchanges", paged: true, what: "exchanges",
    columns: [
      { title: "Vhost", sort: "vhost", cell: e => e.vhost },
      { title: "Name", sort: "name", cell: exchangeLink },
      { title: "Type", sort: "type", cell: e => e.type },
      { title: "Features", cell: features },
      { title: "In /s", sort: "message_stats.publish_in_details.rate", num: true, cell: e => fmt(flowRate(e, "publish_in")) },
      { title: "Out /s", sort: "message_stats.publish_out_details.rate", num: true, cell: e => fmt(flowRate(e, "publish_out")) },
    ],
  });
  return [
    h("h1", {}, "Exchanges"),
    view.add(list),
    h("div", { class: "forms" }, addExchangeForm(view, vhosts)),
  ];
}

function bindingForm(view, vhost, name) {
  const args = argsEditor("Arguments", [["x-match", "string", "headers exchanges: all or any"]]);
  return form("Add a binding from this exchange", [
    field("Destination kind", select("kind", [["q", "queue"], ["e", "exchange"]])),
    field("Destination", h("input", { name: "destination", required: true })),
    field("Routing key", h("input", { name: "routing_key" })),
    args.el,
  ], "Bind", async f => {
    await api("POST", `/api/bindings/${enc(vhost)}/e/${enc(name)}/${val(f, "kind")}/${enc(val(f, "destination"))}`,
      { routing_key: val(f, "routing_key"), arguments: args.value() });
    await view.refresh();
    return `Bound to ${val(f, "destination")}.`;
  }, { id: "bind" });
}

function unbind(view, b) {
  return actionButton("Unbind", "secondary", null, async () => {
    const kind = b.destination_type === "queue" ? "q" : "e";
    await api("DELETE", `/api/bindings/${enc(b.vhost)}/e/${enc(b.source)}/${kind}/${enc(b.destination)}/${enc(b.properties_key)}`);
    await view.refresh();
    return `Unbound ${b.destination}.`;
  });
}

export function exchangePage(view, vhost, name) {
  const base = `/api/exchanges/${enc(vhost)}/${enc(name)}`;
  const isDefault = name === "amq.default";
  view.load(async () => {
    const [e, out, into] = await Promise.all([api("GET", base), api("GET", `${base}/bindings/source`), api("GET", `${base}/bindings/destination`)]);
    return { e, out, into };
  });
  const bindingColumns = (other, otherKind) => [
    { title: otherKind, cell: b => other(b) },
    { title: "Routing key", cell: b => b.routing_key },
    { title: "Arguments", cell: b => JSON.stringify(b.arguments) },
    { title: "", cell: b => b.source ? unbind(view, b) : "" },
  ];
  const toLink = b => b.destination_type === "queue"
    ? queueLink({ vhost, name: b.destination })
    : exchangeLink({ vhost, name: b.destination });
  return [
    h("h1", {}, `Exchange ${isDefault ? "(AMQP default)" : name} `, h("span", { class: "muted" }, `in vhost ${vhost}`)),
    view.live(({ e }) => details([
      ["Type", e.type], ["Durable", e.durable ? "yes" : "no"], ["Auto-delete", e.auto_delete ? "yes" : "no"],
      ["Internal", e.internal ? "yes" : "no"], ["Arguments", JSON.stringify(e.arguments)],
      ["Published in", `${flow(e, "publish_in")} (${fmt(flowRate(e, "publish_in"))}/s)`],
      ["Routed out", `${flow(e, "publish_out")} (${fmt(flowRate(e, "publish_out"))}/s)`],
    ])),
    h("h2", {}, "Bindings from this exchange"),
    view.live(({ out }) => table(bindingColumns(toLink, "To"), out, isDefault
      ? "The default exchange routes to every queue by its name." : "No bindings.")),
    isDefault ? null : [
      h("h2", {}, "Bindings to this exchange"),
      view.live(({ into }) => table(bindingColumns(b => exchangeLink({ vhost, name: b.source }), "From"), into, "No bindings.")),
    ],
    h("div", { class: "forms" },
      isDefault ? null : bindingForm(view, vhost, name),
      publishForm(view, vhost, name, ""),
      isDefault || name.startsWith("amq.") ? null : h("div", { class: "card form" }, h("h2", {}, "Delete"),
        h("div", { class: "row" }, actionButton("Delete exchange", "danger", `Delete exchange ${name}?`, async () => {
          await api("DELETE", base);
          flash(`Exchange ${name} deleted.`, "notice", "#/exchanges");
          location.hash = "#/exchanges";
        })))),
  ];
}
