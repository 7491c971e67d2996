// An editor for AMQP arguments (queue, exchange and binding arguments):
// rows of name, value and type, with one-click rows for the arguments
// antre knows, as in RabbitMQ's UI. The value is read as its type says, so
// `x-max-length` is sent as the number 1000, not the string "1000".

import { h } from "./dom.js";

const TYPES = [["string", "String"], ["number", "Number"], ["boolean", "Boolean"], ["json", "JSON"]];

function parse(key, text, type) {
  switch (type) {
    case "number": {
      const n = Number(text);
      if (text.trim() === "" || !Number.isFinite(n)) throw new Error(`argument ${key} must be a number, not "${text}"`);
      return n;
    }
    case "boolean":
      if (text !== "true" && text !== "false") throw new Error(`argument ${key} must be true or false`);
      return text === "true";
    case "json":
      try { return JSON.parse(text); } catch (e) { throw new Error(`argument ${key} is not valid JSON: ${e.message}`); }
    default:
      return text;
  }
}

/// `known`: [[name, type, hint]] offered as quick-add links. Returns
/// `{ el, value(), set(name, text, type), clear() }`; `value()` throws an
/// Error naming the bad argument.
export function argsEditor(label, known) {
  const rows = h("div", { class: "arg-rows" });
  function addRow(key, text, type) {
    const existing = [...rows.children].find(r => r.querySelector(".arg-key").value === key && key);
    if (existing) {
      existing.querySelector(".arg-value").value = text;
      existing.querySelector(".arg-type").value = type;
      return existing;
    }
    const typeSel = h("select", { class: "arg-type", "aria-label": "Argument type" }, TYPES.map(([v, l]) => h("option", { value: v, selected: v === type }, l)));
    const row = h("div", { class: "arg-row" },
      h("input", { class: "arg-key", value: key || "", placeholder: "name", "aria-label": "Argument name" }),
      h("span", {}, "="),
      h("input", { class: "arg-value", value: text || "", placeholder: "value", "aria-label": "Argument value" }),
      typeSel,
      h("button", { type: "button", class: "link", "aria-label": "Remove argument", onclick: () => row.remove() }, "×"));
    rows.appendChild(row);
    return row;
  }
  const quick = (known || []).map(([key, type, hint]) =>
    h("button", { type: "button", class: "link chip", title: hint, onclick: () => addRow(key, "", type).querySelector(".arg-value").focus() }, key));
  const el = h("fieldset", { class: "args" }, h("legend", {}, label), rows,
    h("div", { class: "arg-quick" }, h("button", { type: "button", class: "link chip", onclick: () => addRow("", "", "string").querySelector(".arg-key").focus() }, "+ argument"),
      quick.length ? [h("span", { class: "muted" }, " add: "), quick] : null));
  return {
    el,
    value() {
      const out = {};
      for (const r of rows.children) {
        const key = r.querySelector(".arg-key").value.trim();
        if (!key) continue;
        out[key] = parse(key, r.querySelector(".arg-value").value, r.querySelector(".arg-type").value);
      }
      return out;
    },
    set(key, text, type) { addRow(key, text, type); },
    remove(key) { for (const r of [...rows.children]) if (r.querySelector(".arg-key").value === key) r.remove(); },
    clear() { rows.replaceChildren(); },
  };
}
