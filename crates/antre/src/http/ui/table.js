// Tables: plain ones for rows a page already has, and listings that fetch
// their rows sorted, filtered and paged.
//
// A listing over one of the API's paged collections (queues, exchanges,
// vhosts, connections, channels) asks the broker for one page with
// `sort`, `sort_reverse`, `name`, `use_regex`, `page` and `page_size`, so a
// broker with 100,000 queues sends the browser 50 of them. The short
// unpaged collections (users, permissions, limits) are fetched whole and
// sorted, filtered and paged here with the same rules.

import { h, api, count } from "./dom.js";

function headCell(c) {
  return h("th", { class: c.num ? "num" : "", scope: "col" }, c.title);
}

function row(columns, r) {
  return h("tr", {}, columns.map(c => h("td", { class: c.num ? "num" : "" }, c.cell(r))));
}

/// A table of `rows`, or `empty` when there are none.
export function table(columns, rows, empty) {
  if (!rows.length) return h("div", { class: "empty card" }, empty || "Nothing here yet.");
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map(headCell))),
    h("tbody", {}, rows.map(r => row(columns, r))));
}

// What each listing was showing, so coming back to a page keeps its sort,
// filter and page.
const remembered = new Map();
const PAGE_SIZES = [20, 50, 100, 500];

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

function dotted(item, path) {
  return path.split(".").reduce((v, k) => (v === undefined || v === null ? undefined : v[k]), item);
}

// The broker's order (Erlang's term order): numbers first, then booleans
// and null, objects, arrays, strings last; a missing field counts as 0.
function rank(v) {
  if (typeof v === "number") return 0;
  if (typeof v === "boolean" || v === null) return 1;
  if (Array.isArray(v)) return 3;
  if (typeof v === "object") return 2;
  return 4;
}

function compare(a, b) {
  if (a === undefined) a = 0;
  if (b === undefined) b = 0;
  const ra = rank(a), rb = rank(b);
  if (ra !== rb) return ra - rb;
  if (ra === 0) return a - b;
  const sa = typeof a === "string" ? a : JSON.stringify(a);
  const sb = typeof b === "string" ? b : JSON.stringify(b);
  return sa < sb ? -1 : sa > sb ? 1 : 0;
}

function nameTest(name, regex) {
  if (!name) return () => true;
  if (regex) {
    let re;
    try { re = new RegExp(name, "i"); } catch { return () => false; }
    return text => re.test(text);
  }
  const needle = name.toLowerCase();
  return text => text.toLowerCase().includes(needle);
}

/// One page of an unpaged collection, in the paged answer's shape.
function pageLocally(items, st, filterText) {
  let rows = items.slice();
  if (st.sort) rows.sort((a, b) => compare(dotted(a, st.sort), dotted(b, st.sort)));
  if (st.reverse) rows.reverse();
  const keep = nameTest(st.name, st.regex);
  rows = rows.filter(r => keep(filterText(r)));
  const pageCount = Math.ceil(rows.length / st.size);
  return {
    items: rows.slice((st.page - 1) * st.size, st.page * st.size),
    filtered_count: rows.length, total_count: items.length, page_count: pageCount,
  };
}

/// A sortable, filterable, paged listing of `opts.path`.
///
/// opts: `id` (remembers its state), `path`, `paged` (the API pages it),
/// `columns` ([{ title, sort: "dotted.field", num, cell: row => node }]),
/// `what` (plural noun, for messages), `sort` (default field),
/// `filterText` (row => text the filter matches; default the name),
/// `fetch` (unpaged only: gets the rows instead of GET `path`),
/// `filterPlaceholder`.
/// Returns `{ el, update }`; `update()` fetches and redraws the rows.
export function listing(opts) {
  const st = remembered.get(opts.id) || { sort: opts.sort || "", reverse: false, page: 1, size: 50, name: "", regex: false };
  remembered.set(opts.id, st);
  const what = opts.what || "items";
  const one = what.replace(/s$/, "");
  const filterText = opts.filterText || (r => r.name || "");
  let seq = 0;

  const heads = opts.columns.map(c => {
    if (!c.sort) return headCell(c);
    const button = h("button", { type: "button", class: "sort", onclick: () => {
      if (st.sort === c.sort) st.reverse = !st.reverse;
      else { st.sort = c.sort; st.reverse = false; }
      st.page = 1;
      update();
    } }, c.title);
    const th = h("th", { class: c.num ? "num" : "", scope: "col" }, button);
    th.sortKey = c.sort;
    return th;
  });
  const tbody = h("tbody");
  const tableEl = h("table", {}, h("thead", {}, h("tr", {}, heads)), tbody);
  const empty = h("div", { class: "empty card", hidden: true });
  const summary = h("span", { class: "summary muted", role: "status" });
  const pageInfo = h("span", { class: "page-info" });
  const prev = h("button", { type: "button", class: "secondary", "aria-label": `Previous page of ${what}`, onclick: () => { st.page--; update(); } }, "‹ Previous");
  const next = h("button", { type: "button", class: "secondary", "aria-label": `Next page of ${what}`, onclick: () => { st.page++; update(); } }, "Next ›");
  // Back to page 1 only when the filter really changed: the box also sends
  // `change` when it loses focus, e.g. to the Next button right after
  // typing, and that must not undo the click a moment later.
  let filtered = st.name;
  const refilter = debounce(() => {
    if (st.name === filtered) return;
    filtered = st.name;
    st.page = 1;
    update();
  }, 250);
  const filter = h("input", { type: "search", class: "filter", value: st.name, placeholder: opts.filterPlaceholder || "Filter by name", "aria-label": `Filter ${what}`,
    oninput: () => { st.name = filter.value; refilter(); }, onchange: () => { st.name = filter.value; refilter(); } });
  const regex = h("input", { type: "checkbox", checked: st.regex, onchange: () => { st.regex = regex.checked; st.page = 1; update(); } });
  const size = h("select", { "aria-label": "Rows per page", onchange: () => { st.size = Number(size.value); st.page = 1; update(); } },
    PAGE_SIZES.map(n => h("option", { value: n, selected: n === st.size }, `${n} per page`)));
  const error = h("p", { class: "error", role: "alert", hidden: true });

  const pager = h("div", { class: "pager" }, prev, pageInfo, next, size);
  const el = h("section", { class: "listing", id: `listing-${opts.id}` },
    h("div", { class: "toolbar" }, filter, h("label", { class: "check" }, regex, "Regex"), summary),
    error, tableEl, empty, pager);

  async function fetchPage() {
    if (!opts.paged) {
      const all = opts.fetch ? await opts.fetch() : await api("GET", opts.path);
      return pageLocally(all, st, filterText);
    }
    const q = new URLSearchParams({ page: st.page, page_size: st.size });
    if (st.sort) { q.set("sort", st.sort); q.set("sort_reverse", st.reverse); }
    if (st.name) { q.set("name", st.name); q.set("use_regex", st.regex); }
    try {
      return await api("GET", `${opts.path}?${q}`);
    } catch (err) {
      // The list shrank under us: go back to its first page.
      if (err.code === "page_out_of_range" && st.page > 1) { st.page = 1; return fetchPage(); }
      throw err;
    }
  }

  async function update() {
    const mine = ++seq;
    let res;
    try {
      res = await fetchPage();
    } catch (err) {
      if (mine !== seq) return;
      error.textContent = err.message;
      error.hidden = false;
      return;
    }
    if (mine !== seq) return;
    if (st.page > Math.max(1, res.page_count)) { st.page = Math.max(1, res.page_count); return update(); }
    error.hidden = true;
    for (const th of heads) {
      if (!th.sortKey) continue;
      const active = th.sortKey === st.sort;
      if (active) th.setAttribute("aria-sort", st.reverse ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
      th.classList.toggle("sorted", active);
      th.classList.toggle("reverse", active && st.reverse);
    }
    tbody.replaceChildren(...res.items.map(r => row(opts.columns, r)));
    const none = res.items.length === 0;
    tableEl.hidden = none;
    empty.hidden = !none;
    empty.textContent = res.total_count === 0 ? (opts.empty || `No ${what} yet.`) : `No ${what} match the filter.`;
    summary.textContent = res.filtered_count === res.total_count
      ? count(res.total_count, one, what)
      : `${res.filtered_count.toLocaleString("en")} of ${count(res.total_count, one, what)} match`;
    const pages = Math.max(1, res.page_count);
    pageInfo.textContent = `Page ${st.page} of ${pages}`;
    // Paging controls only where there is something to page.
    pager.hidden = res.filtered_count <= PAGE_SIZES[0] && st.page === 1;
    prev.disabled = st.page <= 1;
    next.disabled = st.page >= pages;
    el.dataset.page = st.page;
  }

  return { el, update };
}
