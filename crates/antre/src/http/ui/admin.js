// The Admin area (administrators only): users, virtual hosts, permissions
// and topic permissions, policies and operator policies, limits,
// definitions export and import. Each tab is one entry of TABS, its own
// page function; a new admin concept is one more entry.

import { h, api, enc, fmt, field, select, setOptions, form, val, jsonField, actionButton } from "./dom.js";
import { listing } from "./table.js";
import { definitionsTab } from "./definitions.js";

const TABS = [
  ["users", "Users", usersTab],
  ["vhosts", "Virtual hosts", vhostsTab],
  ["permissions", "Permissions", permissionsTab],
  ["policies", "Policies", policiesTab],
  ["limits", "Limits", limitsTab],
  ["definitions", "Definitions", definitionsTab],
  ["feature-flags", "Cluster", featureFlagsTab],
];

export function adminPage(view, tab) {
  const chosen = TABS.find(t => t[0] === tab) || TABS[0];
  return [
    h("h1", {}, "Admin"),
    h("nav", { class: "tabs", "aria-label": "Admin sections" }, TABS.map(([id, title]) =>
      h("a", { href: `#/admin/${id}`, id: `admin-tab-${id}`, class: id === chosen[0] ? "active" : "", "aria-current": id === chosen[0] ? "page" : null }, title))),
    chosen[2](view),
  ];
}

const TAG_HINT = "administrator, monitoring, policymaker, management; none: AMQP only";

function usersTab(view) {
  let users = [], perms = [];
  view.load(async () => {
    [users, perms] = await Promise.all([api("GET", "/api/users"), api("GET", "/api/permissions")]);
  });
  const userForm = form("Add or change a user", [
    field("Name", h("input", { name: "name", required: true, autocomplete: "off" })),
    field("Password", h("input", { name: "password", type: "password", autocomplete: "new-password" }),
      "Empty: an existing user keeps their password; a new one cannot log in with a password."),
    field("Tags", h("input", { name: "tags", placeholder: "management" }), TAG_HINT),
  ], "Save user", async f => {
    const name = val(f, "name");
    const body = { tags: val(f, "tags") };
    const existing = users.find(u => u.name === name);
    if (val(f, "password")) body.password = val(f, "password");
    else if (existing && existing.password_hash) {
      body.password_hash = existing.password_hash;
      body.hashing_algorithm = existing.hashing_algorithm;
    }
    await api("PUT", `/api/users/${enc(name)}`, body);
    f.elements.password.value = "";
    await view.refresh();
    return `User ${name} saved.`;
  }, { id: "user-form" });
  const edit = u => h("button", { type: "button", class: "secondary", onclick: () => {
    userForm.elements.name.value = u.name;
    userForm.elements.tags.value = u.tags.join(", ");
    userForm.elements.password.focus();
  } }, "Edit");
  const list = listing({
    id: "users", path: "/api/users", paged: false, what: "users", sort: "name",
    columns: [
      { title: "Name", sort: "name", cell: u => u.name },
      { title: "Tags", sort: "tags", cell: u => u.tags.length ? u.tags.join(", ") : "(none: AMQP only)" },
      { title: "Password", cell: u => u.password_hash ? "yes" : "none" },
      { title: "Vhosts", cell: u => perms.filter(p => p.user === u.name).map(p => p.vhost).join(", ") },
      { title: "", cell: u => [edit(u), " ", actionButton("Delete", "danger", `Delete user ${u.name}? Their connections are closed.`, async () => {
        await api("DELETE", `/api/users/${enc(u.name)}`);
        await view.refresh();
        return `User ${u.name} deleted.`;
      })] },
    ],
  });
  return [view.add(list), h("div", { class: "forms" }, userForm)];
}

/// The feature flags (GET /api/feature-flags): a cluster enables one once
/// every member's version supports it; until then each member holding it
/// back is named.
/// The cluster's name (RabbitMQ's "Change cluster name") and its feature
/// flags.
function featureFlagsTab(view) {
  let current = "";
  view.load(async () => {
    current = (await api("GET", "/api/cluster-name")).name;
  });
  const nameForm = form("Cluster name", [
    field("Name", h("input", { name: "name", required: true, autocomplete: "off" }),
      "Shown in the overview, the API and the metrics' rabbitmq_cluster label; every node of a cluster shares it."),
  ], "Rename", async f => {
    const name = val(f, "name");
    await api("PUT", "/api/cluster-name", { name });
    await view.refresh();
    return `The cluster is named ${name}.`;
  }, { id: "cluster-name-form" });
  const list = listing({
    id: "feature-flags", path: "/api/feature-flags", paged: false, what: "feature flags", sort: "name",
    columns: [
      { title: "Name", sort: "name", cell: f => f.name },
      { title: "State", sort: "state", cell: f => f.state },
      { title: "Waiting for", cell: f => f.waiting_for.map(w => `${w.node} (${w.reason})`).join(", ") },
      { title: "Description", cell: f => f.desc },
    ],
  });
  return [
    view.live(() => h("p", { id: "cluster-name" }, `This cluster is named ${current}.`)),
    h("div", { class: "forms" }, nameForm),
    h("h2", {}, "Feature flags"),
    view.add(list), h("p", { class: "hint" },
      "A cluster enables a flag once every member runs a version of antre that supports it; what needs the flag waits until then."),
  ];
}

function vhostsTab(view) {
  const list = listing({
    id: "vhosts", path: "/api/vhosts", paged: true, what: "virtual hosts",
    columns: [
      { title: "Name", sort: "name", cell: v => v.name },
      { title: "Ready", sort: "messages_ready", num: true, cell: v => fmt(v.messages_ready) },
      { title: "Unacked", sort: "messages_unacknowledged", num: true, cell: v => fmt(v.messages_unacknowledged) },
      { title: "Total", sort: "messages", num: true, cell: v => fmt(v.messages) },
      { title: "Connections", sort: "connections", num: true, cell: v => fmt(v.connections) },
      { title: "", cell: v => actionButton("Delete", "danger", `Delete vhost ${v.name} and everything in it?`, async () => {
        await api("DELETE", `/api/vhosts/${enc(v.name)}`);
        await view.refresh();
        return `Vhost ${v.name} deleted.`;
      }) },
    ],
  });
  return [view.add(list), h("div", { class: "forms" }, form("Add a virtual host", [
    field("Name", h("input", { name: "name", required: true })),
  ], "Add vhost", async f => {
    await api("PUT", `/api/vhosts/${enc(val(f, "name"))}`);
    await view.refresh();
    return `Vhost ${val(f, "name")} added; you have every permission in it.`;
  }, { id: "vhost-form" }))];
}

/// `count` pairs of user and vhost selects that follow the broker's lists
/// on each refresh, keeping what is chosen.
function namePickers(view, count) {
  const pairs = Array.from({ length: count }, () => [select("user", []), select("vhost", [])]);
  view.load(async () => {
    const [users, vhosts] = await Promise.all([api("GET", "/api/users?columns=name"), api("GET", "/api/vhosts?columns=name")]);
    for (const [u, v] of pairs) {
      setOptions(u, users.map(x => x.name));
      setOptions(v, vhosts.map(x => x.name));
    }
  });
  return pairs;
}

function clearButton(view, what, path) {
  return actionButton("Clear", "secondary", null, async () => {
    await api("DELETE", path);
    await view.refresh();
    return `Cleared ${what}.`;
  });
}

function permissionsTab(view) {
  const [[u1, v1], [u2, v2]] = namePickers(view, 2);
  const perms = listing({
    id: "permissions", path: "/api/permissions", paged: false, what: "permissions", sort: "user",
    filterText: p => `${p.user} ${p.vhost}`, filterPlaceholder: "Filter by user or vhost",
    columns: [
      { title: "User", sort: "user", cell: p => p.user },
      { title: "Vhost", sort: "vhost", cell: p => p.vhost },
      { title: "Configure", cell: p => p.configure },
      { title: "Write", cell: p => p.write },
      { title: "Read", cell: p => p.read },
      { title: "", cell: p => clearButton(view, `the permissions of ${p.user} in ${p.vhost}`, `/api/permissions/${enc(p.vhost)}/${enc(p.user)}`) },
    ],
  });
  const topics = listing({
    id: "topic-permissions", path: "/api/topic-permissions", paged: false, what: "topic permissions", sort: "user",
    filterText: p => `${p.user} ${p.vhost} ${p.exchange}`, filterPlaceholder: "Filter by user, vhost or exchange",
    columns: [
      { title: "User", sort: "user", cell: p => p.user },
      { title: "Vhost", sort: "vhost", cell: p => p.vhost },
      { title: "Exchange", sort: "exchange", cell: p => p.exchange },
      { title: "Write", cell: p => p.write },
      { title: "Read", cell: p => p.read },
      { title: "", cell: p => clearButton(view, `the topic permissions of ${p.user} on ${p.exchange}`,
        `/api/topic-permissions/${enc(p.vhost)}/${enc(p.user)}?exchange=${enc(p.exchange)}`) },
    ],
  });
  return [
    h("h2", {}, "Permissions"),
    h("p", { class: "muted" }, "Regular expressions over resource names; a user with none in a vhost cannot use it."),
    view.add(perms),
    h("h2", {}, "Topic permissions"),
    h("p", { class: "muted" }, "Regular expressions over routing keys, checked on publish and bind to topic exchanges."),
    view.add(topics),
    h("div", { class: "forms" },
      form("Set permissions", [
        field("User", u1), field("Vhost", v1),
        field("Configure (regex)", h("input", { name: "configure", value: ".*" })),
        field("Write (regex)", h("input", { name: "write", value: ".*" })),
        field("Read (regex)", h("input", { name: "read", value: ".*" })),
      ], "Set permissions", async f => {
        const body = { configure: val(f, "configure"), write: val(f, "write"), read: val(f, "read") };
        await api("PUT", `/api/permissions/${enc(val(f, "vhost"))}/${enc(val(f, "user"))}`, body);
        await view.refresh();
        return `Permissions of ${val(f, "user")} in ${val(f, "vhost")} set.`;
      }, { id: "permission-form" }),
      form("Set a topic permission", [
        field("User", u2), field("Vhost", v2),
        field("Exchange", h("input", { name: "exchange", value: "amq.topic", required: true })),
        field("Write (regex)", h("input", { name: "write", value: ".*" })),
        field("Read (regex)", h("input", { name: "read", value: ".*" })),
      ], "Set topic permission", async f => {
        const body = { exchange: val(f, "exchange"), write: val(f, "write"), read: val(f, "read") };
        await api("PUT", `/api/topic-permissions/${enc(val(f, "vhost"))}/${enc(val(f, "user"))}`, body);
        await view.refresh();
        return `Topic permission of ${val(f, "user")} on ${val(f, "exchange")} set.`;
      }, { id: "topic-permission-form" })),
  ];
}

/// Limits as RabbitMQ lists them (`[{"vhost": "/", "value": {"max-connections": 10}}]`),
/// one row per limit.
function limitRows(items, owner) {
  return items.flatMap(item => Object.entries(item.value || {}).map(([limit, value]) => ({ name: item[owner], limit, value })));
}

function limitListing(id, path, owner, what) {
  return listing({
    id, path: "", paged: false, what, sort: "name",
    columns: [
      { title: owner === "vhost" ? "Vhost" : "User", sort: "name", cell: r => r.name },
      { title: "Limit", sort: "limit", cell: r => r.limit },
      { title: "Value", sort: "value", num: true, cell: r => fmt(r.value) },
    ],
    fetch: async () => limitRows(await api("GET", path), owner),
  });
}

function limitsTab(view) {
  return [
    h("p", { class: "muted" }, "The limits in effect, read-only here: set them with PUT /api/vhost-limits/{vhost}/{limit} and /api/user-limits/{user}/{limit}, as in RabbitMQ."),
    h("h2", {}, "Virtual host limits"),
    view.add(limitListing("vhost-limits", "/api/vhost-limits", "vhost", "vhost limits")),
    h("h2", {}, "User limits"),
    view.add(limitListing("user-limits", "/api/user-limits", "user", "user limits")),
  ];
}

const APPLY_TO = ["all", "queues", "exchanges", "classic_queues", "quorum_queues", "streams"];

function policyListing(view, id, base, what) {
  return listing({
    id, path: base, paged: false, what, sort: "priority",
    filterText: p => `${p.name} ${p.vhost} ${p.pattern}`, filterPlaceholder: "Filter by name, vhost or pattern",
    columns: [
      { title: "Vhost", sort: "vhost", cell: p => p.vhost },
      { title: "Name", sort: "name", cell: p => p.name },
      { title: "Pattern", sort: "pattern", cell: p => h("code", {}, p.pattern) },
      { title: "Apply to", sort: "apply-to", cell: p => p["apply-to"] },
      { title: "Definition", cell: p => h("code", {}, JSON.stringify(p.definition)) },
      { title: "Priority", sort: "priority", num: true, cell: p => String(p.priority) },
      { title: "", cell: p => actionButton("Delete", "danger", `Delete ${what.replace(/ies$/, "y")} ${p.name} in ${p.vhost}? What it set is undone at once.`, async () => {
        await api("DELETE", `${base}/${enc(p.vhost)}/${enc(p.name)}`);
        await view.refresh();
        return `Deleted ${p.name}.`;
      }) },
    ],
  });
}

function policiesTab(view) {
  const vhost = select("vhost", []);
  view.load(async () => setOptions(vhost, (await api("GET", "/api/vhosts?columns=name")).map(v => v.name)));
  const kind = select("kind", [["policy", "Policy"], ["operator", "Operator policy"]]);
  const policyForm = form("Add or change a policy", [
    field("Kind", kind, "Operator policies cap what policies and queue arguments ask for; they take only expires, message-ttl, max-length, max-length-bytes, max-in-memory-length, max-in-memory-bytes and delivery-limit."),
    field("Vhost", vhost),
    field("Name", h("input", { name: "name", required: true, autocomplete: "off" })),
    field("Pattern (regex)", h("input", { name: "pattern", required: true, placeholder: "^orders\\." }),
      "Matched anywhere in the name: anchor it with ^ and $."),
    field("Apply to", select("apply-to", APPLY_TO)),
    field("Priority", h("input", { name: "priority", type: "number", value: "0" }), "The highest priority among matching policies applies."),
    field("Definition (JSON)", h("textarea", { name: "definition", rows: 4, required: true, placeholder: '{"max-length": 1000, "dead-letter-exchange": "dlx"}' }),
      "Keys as in RabbitMQ: message-ttl, expires, max-length, max-length-bytes, overflow, dead-letter-exchange, dead-letter-routing-key, delivery-limit, consumer-timeout, alternate-exchange, ... (mirroring and queue-mode keys are accepted and have no effect)."),
  ], "Save policy", async f => {
    const base = val(f, "kind") === "operator" ? "/api/operator-policies" : "/api/policies";
    const body = {
      pattern: val(f, "pattern"),
      definition: jsonField(f, "definition", "The definition"),
      priority: Number(val(f, "priority") || 0),
      "apply-to": val(f, "apply-to"),
    };
    await api("PUT", `${base}/${enc(val(f, "vhost"))}/${enc(val(f, "name"))}`, body);
    await view.refresh();
    return `Policy ${val(f, "name")} saved; it applies at once.`;
  }, { id: "policy-form" });
  return [
    h("h2", {}, "Policies"),
    h("p", { class: "muted" }, "Settings applied to the queues and exchanges whose names match, highest priority first; queue arguments below a policy's limit win."),
    view.add(policyListing(view, "policies", "/api/policies", "policies")),
    h("h2", {}, "Operator policies"),
    view.add(policyListing(view, "operator-policies", "/api/operator-policies", "operator policies")),
    h("div", { class: "forms" }, policyForm),
  ];
}
