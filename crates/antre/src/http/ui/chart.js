// Line charts drawn as SVG, and the sample histories behind the per-object
// charts.
//
// The y axis has "nice" ticks (1, 2, 2.5 or 5 times a power of ten) and a
// left margin as wide as its widest label, measured with the font it is
// drawn in, so a label such as "40,000" is never cut off by the edge of
// the drawing.

import { h, s, fmt } from "./dom.js";

const W = 600, H = 220, R = 12, T = 12, B = 24, TICKS = 4;
const FONT_PX = 11;
const FONT = `${FONT_PX}px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif`;

let measurer = null;
/// The width of `text` in the axis font, in SVG units (1 unit = 1 px at
/// the viewBox's natural size).
function textWidth(text) {
  measurer = measurer || document.createElement("canvas").getContext("2d");
  measurer.font = FONT;
  return measurer.measureText(text).width;
}

/// Tick values 0, step, 2 step, ... up to at least `max`.
export function niceTicks(max, integer) {
  if (!(max > 0)) max = 1;
  const raw = max / TICKS;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  let step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * mag;
  if (integer) step = Math.max(1, Math.ceil(step));
  // The step is at least max / TICKS, so this stops after TICKS + 1.
  const ticks = [0];
  while (ticks[ticks.length - 1] < max) ticks.push(ticks.length * step);
  return ticks;
}

function tickLabel(v) {
  return v.toLocaleString("en", { maximumFractionDigits: 3 });
}

/// A chart card. `series`: [{ name, color, points: [[ms, value], ...] }],
/// oldest point first. `opts.unit` follows values in the legend;
/// `opts.integer` keeps ticks whole (message counts); `opts.empty` is a
/// note drawn across the chart (e.g. while it has too few samples).
export function lineChart(title, series, opts) {
  const o = opts || {};
  const all = series.flatMap(x => x.points);
  const ticks = niceTicks(Math.max(0, ...all.map(p => p[1])), o.integer);
  const top = ticks[ticks.length - 1];
  const labels = ticks.map(tickLabel);
  const L = Math.ceil(Math.max(...labels.map(textWidth))) + 14;
  const now = o.now || Date.now();
  const t0 = all.length ? Math.min(...all.map(p => p[0])) : now - 600000;
  const t1 = Math.max(now, t0 + 1, ...all.map(p => p[0]));
  const x = t => L + (W - L - R) * (t - t0) / (t1 - t0);
  const y = v => T + (H - T - B) * (1 - v / top);
  const latest = series.map(ser => `${ser.name} ${ser.points.length ? fmt(ser.points[ser.points.length - 1][1]) : "no samples"}${o.unit || ""}`).join(", ");
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}: ${latest}`, "font-size": FONT_PX, "font-family": 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif' });
  ticks.forEach((v, i) => {
    svg.appendChild(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e6e9ee" }));
    svg.appendChild(s("text", { class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end", fill: "#6b7585" }, labels[i]));
  });
  svg.appendChild(s("text", { class: "axis", x: L, y: H - 6, fill: "#6b7585" }, new Date(t0).toLocaleTimeString()));
  svg.appendChild(s("text", { class: "axis", x: W - R, y: H - 6, fill: "#6b7585", "text-anchor": "end" }, new Date(t1).toLocaleTimeString()));
  for (const ser of series) {
    if (!ser.points.length) continue;
    const d = ser.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.appendChild(s("path", { d, fill: "none", stroke: ser.color, "stroke-width": 2, "data-series": ser.name }));
  }
  if (!all.length || o.empty) {
    svg.appendChild(s("text", { x: (L + W - R) / 2, y: H / 2, "text-anchor": "middle", fill: "#6b7585" }, o.empty || "No samples yet"));
  }
  const legend = h("div", { class: "legend" }, series.map(ser => {
    const last = ser.points.length ? ser.points[ser.points.length - 1][1] : 0;
    return h("span", {}, h("i", { style: `background:${ser.color}` }), `${ser.name}: ${fmt(Math.round(last * 10) / 10)}${o.unit || ""}`);
  }));
  return h("div", { class: "card chart" }, h("h2", {}, title), svg, legend);
}

// ---- samples ----------------------------------------------------------------

/// Rates between consecutive samples of a counter (samples newest first,
/// as the API gives them).
export function ratesOf(samples) {
  const pts = (samples || []).slice().reverse();
  const out = [];
  for (let i = 1; i < pts.length; i++) {
    const dt = (pts[i].timestamp - pts[i - 1].timestamp) / 1000;
    if (dt > 0) out.push([pts[i].timestamp, Math.max(0, (pts[i].sample - pts[i - 1].sample) / dt)]);
  }
  return out;
}

export function levelsOf(samples) {
  return (samples || []).slice().reverse().map(p => [p.timestamp, p.sample]);
}

const KEEP_SAMPLES = 120;
const KEEP_OBJECTS = 200;
const histories = new Map();

/// Remembers `values` (e.g. `{ publish: 3.2, ready: 10 }`) for the object
/// `key` and returns its samples, oldest first. The API gives one queue's
/// or connection's current rates only, so its charts show what this page
/// has seen since it was opened: the last 120 samples of the 200 objects
/// looked at most recently.
export function record(key, values, at) {
  let hist = histories.get(key);
  if (hist) histories.delete(key);
  else hist = [];
  histories.set(key, hist);
  hist.push({ t: at || Date.now(), v: values });
  if (hist.length > KEEP_SAMPLES) hist.shift();
  if (histories.size > KEEP_OBJECTS) histories.delete(histories.keys().next().value);
  return hist;
}

/// One chart series from a history: the points of `field`.
export function seriesOf(hist, field, name, color) {
  return { name, color, points: hist.map(p => [p.t, p.v[field]]) };
}
