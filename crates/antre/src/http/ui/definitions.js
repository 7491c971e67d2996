// Definitions export and import (RabbitMQ's definitions file: vhosts,
// users, permissions, exchanges, queues, bindings), for the Admin area.

import { h, api, enc, count, field, select, setOptions, form, val, checked, checkbox, download } from "./dom.js";

function fileName(vhost) {
  const day = new Date().toISOString().slice(0, 10);
  const which = vhost ? `-${vhost.replace(/[^A-Za-z0-9_.-]+/g, "_") || "root"}` : "";
  return `antre-definitions${which}-${day}.json`;
}

function summary(exchanges, queues, bindings, policies) {
  const parts = [count(exchanges, "exchange"), count(queues, "queue"), count(bindings, "binding")];
  if (policies) parts.push(count(policies, "policy"));
  return parts.join(", ");
}

export function definitionsTab(view) {
  const all = [["", "all vhosts, users and permissions"]];
  const exportVhost = select("vhost", all), importVhost = select("vhost", all);
  view.load(async () => {
    const names = (await api("GET", "/api/vhosts?columns=name")).map(v => v.name);
    for (const sel of [exportVhost, importVhost]) {
      const chosen = sel.value;
      setOptions(sel, names);
      sel.prepend(h("option", { value: "" }, all[0][1]));
      sel.value = chosen;
    }
  });
  const file = h("input", { type: "file", name: "file", accept: ".json,application/json", required: true });
  return [
    h("p", { class: "muted" }, "The same file as RabbitMQ's: a file exported from RabbitMQ imports here (with its policies and operator policies) and one exported here imports into RabbitMQ. What antre cannot apply (a plugin's parameters, an unknown exchange type) fails the import, listed, before anything changes, unless you choose to skip it."),
    h("div", { class: "forms" },
      form("Export definitions", [
        field("Of", exportVhost, "One vhost's file has only its exchanges, queues, bindings and policies."),
      ], "Download", async f => {
        const vhost = val(f, "vhost");
        const defs = await api("GET", vhost ? `/api/definitions/${enc(vhost)}` : "/api/definitions");
        const name = fileName(vhost);
        download(name, JSON.stringify(defs, null, 2));
        return `Downloaded ${name}: ${summary(defs.exchanges.length, defs.queues.length, defs.bindings.length)}.`;
      }, { id: "export-definitions" }),
      form("Import definitions", [
        field("File", file),
        field("Into", importVhost, "Into one vhost: the file's exchanges, queues and bindings go there, whatever vhost they name."),
        checkbox("skip", "Skip what antre cannot apply, and list it"),
      ], "Import", async f => {
        const text = await file.files[0].text();
        let defs;
        try { defs = JSON.parse(text); } catch (e) { throw new Error(`${file.files[0].name} is not JSON: ${e.message}`); }
        const vhost = val(f, "vhost");
        const path = vhost ? `/api/definitions/${enc(vhost)}` : "/api/definitions";
        const r = await api("POST", checked(f, "skip") ? `${path}?skip_unsupported=true` : path, defs);
        await view.refresh();
        const counts = r ? ` (${summary(r.exchanges, r.queues, r.bindings, (r.policies || 0) + (r.operator_policies || 0))})` : "";
        const skipped = r && r.skipped && r.skipped.length ? ` Skipped: ${r.skipped.join("; ")}.` : "";
        return `Imported ${file.files[0].name}${counts}.${skipped}`;
      }, { id: "import-definitions" })),
  ];
}
