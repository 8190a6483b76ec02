"""One self-contained HTML file that shows a calibration: the analysis report.

:func:`render` takes the report's data, a JSON-compatible dict: ``title``; ``summary`` (label
-> value rows); ``methods`` (the method names, in the colours' order); ``quantizers``, each
``{name, kind, shape, layout, best, methods: {method: {min, max, sqnr_db, clipped}}, hist:
{lo, hi, counts} | None, batches: [[min, max], ...], flags: [...], gain_db, own_sqnr_db}``;
optionally ``sensitivity`` (``{layer, op, weights_sqnr_db, activations_sqnr_db}`` per layer)
and ``comparison`` (``{label, output_sqnr_db, measured_on, note}`` per row; ``note``, where
a row has no score, says why). It returns the page:
the data sits in the page as JSON, a few hundred lines of plain JavaScript draw it (no
library, no network: it opens from ``file://``), the table is sorted, filtered and paged in
the browser (a few thousand quantizers stay quick), and a quantizer's charts (its histogram
with every method's range, its range per batch) are drawn as SVG when it is chosen.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np

from ._io import write_atomic

__all__ = ["HISTOGRAM_BINS", "histogram_of", "render", "write_report"]

HISTOGRAM_BINS = 128
"""Bins of each quantizer's histogram in the report."""


def histogram_of(values, bins: int = HISTOGRAM_BINS) -> dict | None:
    """Return ``{"lo", "hi", "counts"}`` of the finite ``values`` (NumPy), ``None`` if none."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    # edges by halves: hi - lo may overflow (+-1e308), and NumPy's range= refuses a range
    # narrower than its bins (two neighbouring doubles); equal edges make empty bins
    edges = 2 * np.linspace(lo / 2, hi / 2, bins + 1)
    edges[0], edges[-1] = lo, hi
    counts, _ = np.histogram(v, bins=np.maximum.accumulate(edges))
    return {"lo": lo, "hi": hi, "counts": counts.astype(int).tolist()}


def rebin(counts, lo: float, hi: float, bins: int = HISTOGRAM_BINS) -> dict:
    """Return an equal-width histogram ``(counts over [lo, hi])`` with ``bins`` bins at most."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    if c.size > bins and c.size % bins == 0:
        c = c.reshape(bins, -1).sum(axis=1)
    return {"lo": float(lo), "hi": float(hi), "counts": [int(round(x)) for x in c]}


def _clean(v):
    """JSON-compatible ``v``: non-finite floats become ``None``."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # NumPy scalars
        return _clean(v.item())
    return v


MAX_BATCHES = 1024
"""The most per-batch ranges a quantizer's chart holds (more are merged, min of mins and max
of maxes, so the envelope stays)."""


def _bounded_histogram(h: dict | None, bins: int = HISTOGRAM_BINS) -> dict | None:
    """Return ``h`` with at most ``bins`` equal-width bins (counts kept; the top may widen)."""
    if not h or len(h["counts"]) <= bins:
        return h
    c = np.asarray(h["counts"], dtype=np.int64)
    k = -(-c.size // bins)  # original bins per new bin
    groups = -(-c.size // k)
    padded = np.zeros(groups * k, dtype=np.int64)
    padded[: c.size] = c
    width = (h["hi"] - h["lo"]) / c.size
    hi = h["hi"] if groups * k == c.size else h["lo"] + width * groups * k
    return {**h, "hi": hi, "counts": padded.reshape(groups, k).sum(axis=1).tolist()}


def _bounded_batches(ranges: list | None) -> list | None:
    """Return at most :data:`MAX_BATCHES` per-batch ranges (each merged group's envelope)."""
    if not ranges or len(ranges) <= MAX_BATCHES:
        return ranges
    r = np.asarray(ranges, dtype=np.float64)
    cuts = np.linspace(0, len(r), MAX_BATCHES + 1).astype(int)
    lo = np.minimum.reduceat(r[:, 0], cuts[:-1])
    hi = np.maximum.reduceat(r[:, 1], cuts[:-1])
    return np.stack([lo, hi], axis=1).tolist()


def _bounded(data: dict) -> dict:
    """Return ``data`` with every chart's data bounded (bins, batches): pages stay quick."""
    if "quantizers" not in data:
        return data
    bound = {"hist": _bounded_histogram, "batches": _bounded_batches}
    quantizers = [
        {k: bound[k](v) if k in bound else v for k, v in q.items()} for q in data["quantizers"]
    ]
    return {**data, "quantizers": quantizers}


def render(data: dict) -> str:
    r"""Return the report page for ``data`` (the module's docstring lists its keys).

    The data sits in the page as JSON with every ``<`` escaped (``\u003c``: no name can close
    the script or open a comment); the title and the data are substituted in one pass.
    """
    payload = json.dumps(_clean(_bounded(data)), allow_nan=False, separators=(",", ":"))
    payload = payload.replace("<", "\\u003c")
    fill = {
        "@TITLE@": html.escape(str(data.get("title", "encanalyze report"))),
        "@DATA@": payload,
    }
    return re.sub("@TITLE@|@DATA@", lambda m: fill[m.group()], _PAGE)


def write_report(path, data: dict, inputs=()) -> Path:
    """Write the report page for ``data`` at ``path`` atomically; return the path.

    ``inputs``: files the report was made from (a model and its external data), which the page
    may not overwrite.
    """
    text = render(data).encode("utf-8")
    write_atomic(Path(path), lambda f: f.write(text), inputs, "report")
    return Path(path)


_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
h1 { font-size: 1.5em; margin: 0.8em 0 0.3em; } h2 { font-size: 1.2em; margin: 1.4em 0 0.4em; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #ddd; }
#quantizers td { white-space: nowrap; }
th { background: #f3f3f3; text-align: left; white-space: nowrap; }
th.sortable { cursor: pointer; } th.sorted-asc::after { content: " \25B2"; }
th.sorted-desc::after { content: " \25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.row { cursor: pointer; } tr.row:hover { background: #eef4ff; } tr.selected { background: #dde8ff; }
.best { font-weight: bold; color: #0a5; } .flag { color: #b30; font-weight: bold; }
#summary td:first-child { color: #555; } .controls { margin: 0.5em 0; }
.controls > * { margin-right: 1em; } #chart svg { border: 1px solid #ddd; background: #fff; }
.legend span { display: inline-block; margin-right: 1.2em; } .swatch { display: inline-block;
  width: 1.2em; height: 3px; vertical-align: middle; margin-right: 0.3em; }
#hint li { margin: 0.2em 0; } .muted { color: #777; }
.scroll { max-height: 22em; overflow-y: auto; display: inline-block; }
.range-cell { font-size: 0.8em; color: #666; font-weight: normal; white-space: nowrap; }
</style>
</head>
<body>
<h1 id="title"></h1>
<table id="summary"></table>
<section id="comparison-section" hidden><h2 id="comparison-title">The model's output SQNR by method</h2>
<table id="comparison"></table></section>
<section id="sensitivity-section" hidden><h2>Layer sensitivity</h2>
<p class="muted" id="sensitivity-text">The model's output SQNR when only this layer's weights, or only its activations,
are quantized, everything else in floating point; most sensitive first.</p>
<div id="hint"></div><div class="scroll"><table id="sensitivity"></table></div></section>
<h2>Quantizers</h2>
<div class="controls">
<input id="filter" type="search" placeholder="filter by name" size="30">
<select id="kind"></select>
<label><input id="flagged" type="checkbox"> flagged only</label>
<span id="count" class="muted"></span>
</div>
<table id="quantizers"><thead></thead><tbody></tbody></table>
<div class="controls" id="pager"><button id="prev">previous</button>
<span id="page"></span><button id="next">next</button></div>
<section id="chart-section"><h2 id="chart-title">Choose a quantizer to see its histogram</h2>
<div class="controls" id="chart-controls" hidden><label><input id="log" type="checkbox" checked>
log counts</label></div>
<div id="chart"></div><div id="legend" class="legend"></div><div id="batches"></div></section>
<script type="application/json" id="report-data">@DATA@</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("report-data").textContent);
const METHODS = DATA.methods || [];
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];
const PAGE = 50;
const SVGNS = "http://www.w3.org/2000/svg";
const Q = DATA.quantizers || [];
let order = Q.map((_, i) => i), sortKey = null, sortDir = 1, page = 0, selected = null;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}
function fmt(v, digits) {
  if (v === null || v === undefined) return "n/a";
  if (typeof v !== "number") return String(v);
  if (v === 0) return "0";
  const a = Math.abs(v);
  return (a >= 1e4 || a < 1e-3) ? v.toExponential(digits || 3) : v.toPrecision(digits || 4);
}
function db(v) { return (v === null || v === undefined) ? "n/a" : v.toFixed(2); }
// a model with no float output is scored by its outputs' agreement in %, not by SQNR
const AGREE = DATA.output_unit === "%";
const OUT = AGREE ? {name: "output agreement", unit: "%", gain: "points"} : {name: "output SQNR", unit: "dB", gain: "dB"};
function color(m) { const i = METHODS.indexOf(m); return COLORS[(i < 0 ? 6 : i) % COLORS.length]; }

function summary() {
  document.getElementById("title").textContent = DATA.title || "encanalyze report";
  const t = document.getElementById("summary");
  for (const [k, v] of Object.entries(DATA.summary || {})) {
    const tr = el("tr");
    tr.append(el("td", {}, k), el("td", {}, typeof v === "number" ? fmt(v) : String(v)));
    t.append(tr);
  }
}

function comparison() {
  const rows = DATA.comparison || [];
  if (!rows.length) return;
  document.getElementById("comparison-section").hidden = false;
  const t = document.getElementById("comparison");
  const head = el("tr");
  for (const h of ["what", `${OUT.name} ${OUT.unit}`, "measured on"]) head.append(el("th", {}, h));
  t.append(head);
  const best = rows.reduce((m, r) => Math.max(m, r.output_sqnr_db ?? -Infinity), -Infinity);
  for (const r of rows) {
    const tr = el("tr");
    const name = el("td", {}, r.label);
    if (r.output_sqnr_db === best) name.className = "best";
    const where = r.note ? `${r.measured_on || ""} (${r.note})` : (r.measured_on || "");
    tr.append(name, el("td", {class: "num"}, db(r.output_sqnr_db)), el("td", {}, where));
    t.append(tr);
  }
}

function sensitivity() {
  const rows = (DATA.sensitivity || []).slice();
  if (!rows.length) return;
  document.getElementById("sensitivity-section").hidden = false;
  const worst = r => Math.min(r.weights_sqnr_db ?? Infinity, r.activations_sqnr_db ?? Infinity);
  rows.sort((a, b) => worst(a) - worst(b));
  const hint = document.getElementById("hint");
  const top = rows.slice(0, Math.min(3, rows.length));
  hint.append(el("p", {}, "Keep in higher precision first (mixed-precision hint):"));
  const ol = el("ol", {id: "hint-list"});
  for (const r of top) {
    const part = (r.weights_sqnr_db ?? Infinity) < (r.activations_sqnr_db ?? Infinity)
      ? "weights" : "activations";
    ol.append(el("li", {}, `${r.layer} (${r.op}): its ${part}, ${db(worst(r))} ${OUT.unit} alone`));
  }
  hint.append(ol);
  const gains = Q.filter(q => (q.gain_db ?? 0) > 0).sort((a, b) => b.gain_db - a.gain_db).slice(0, 3);
  if (gains.length) {
    hint.append(el("p", {}, "Largest output gains from keeping one quantizer in floating point:"));
    const ul = el("ol", {id: "gain-list"});
    for (const q of gains) ul.append(el("li", {}, `${q.name} (${q.kind}): +${db(q.gain_db)} ${OUT.gain}`));
    hint.append(ul);
  }
  if (Q.some(q => (q.gain_db ?? 0) < 0))
    hint.append(el("p", {id: "negative-gains"}, "A negative output gain: the output is closer " +
      "to the float model's with that quantizer on than with it off (its error offsets " +
      "the others'); keeping it in floating point would not help."));
  const t = document.getElementById("sensitivity");
  const head = el("tr");
  for (const h of ["rank", "layer", "op", `weights only ${OUT.unit}`, `activations only ${OUT.unit}`])
    head.append(el("th", {}, h));
  t.append(head);
  rows.forEach((r, i) => {
    const tr = el("tr", {class: "sens"});
    tr.append(el("td", {class: "num"}, String(i + 1)), el("td", {}, r.layer), el("td", {}, r.op),
      el("td", {class: "num"}, db(r.weights_sqnr_db)), el("td", {class: "num"}, db(r.activations_sqnr_db)));
    t.append(tr);
  });
}

const COLUMNS = [
  {key: "name", label: "quantizer", get: q => q.name},
  {key: "kind", label: "kind", get: q => q.kind},
  {key: "shape", label: "shape", get: q => (q.shape || []).join("\u00d7"), sort: q => (q.shape || []).reduce((a, b) => a * b, 1)},
  {key: "layout", label: "layout", get: q => q.layout},
  {key: "best", label: "in use", get: q => q.best},
];
if (Q.some(q => q.own_sqnr_db !== undefined && q.own_sqnr_db !== null))
  COLUMNS.push({key: "own", label: "own dB", num: true, get: q => db(q.own_sqnr_db), sort: q => q.own_sqnr_db});
if (Q.some(q => q.gain_db !== undefined && q.gain_db !== null))
  COLUMNS.push({key: "gain", label: `output gain in float ${OUT.gain}`, num: true, get: q => db(q.gain_db), sort: q => q.gain_db});
COLUMNS.push({key: "flags", label: "flags", get: q => (q.flags || []).join(", ")});
for (const m of METHODS) {
  COLUMNS.push({key: m, label: m + " dB [range]", num: true, get: q => {
    const r = (q.methods || {})[m]; return r ? db(r.sqnr_db) : "";
  }, range: q => { const r = (q.methods || {})[m]; return r ? `[${fmt(r.min, 3)}, ${fmt(r.max, 3)}]` : ""; },
  sort: q => { const r = (q.methods || {})[m]; return r ? r.sqnr_db : null; }});
}

function header() {
  const tr = el("tr");
  for (const c of COLUMNS) {
    const th = el("th", {class: "sortable", "data-key": c.key}, c.label);
    th.addEventListener("click", () => sortBy(c.key));
    tr.append(th);
  }
  document.querySelector("#quantizers thead").append(tr);
  const kind = document.getElementById("kind");
  kind.append(el("option", {value: ""}, "every kind"));
  for (const k of [...new Set(Q.map(q => q.kind))]) kind.append(el("option", {value: k}, k));
}

function sortBy(key) {
  sortDir = sortKey === key ? -sortDir : 1;
  sortKey = key;
  const c = COLUMNS.find(c => c.key === key);
  const value = c.sort || c.get;
  order.sort((i, j) => {
    const a = value(Q[i]), b = value(Q[j]);
    if (a === b) return i - j;
    if (a === null || a === undefined || a === "") return 1;
    if (b === null || b === undefined || b === "") return -1;
    return (a < b ? -1 : 1) * sortDir;
  });
  for (const th of document.querySelectorAll("#quantizers th")) {
    th.classList.toggle("sorted-asc", th.dataset.key === key && sortDir === 1);
    th.classList.toggle("sorted-desc", th.dataset.key === key && sortDir === -1);
  }
  page = 0;
  table();
}

function visible() {
  const text = document.getElementById("filter").value.toLowerCase();
  const kind = document.getElementById("kind").value;
  const flagged = document.getElementById("flagged").checked;
  return order.filter(i => {
    const q = Q[i];
    return (!text || q.name.toLowerCase().includes(text)) && (!kind || q.kind === kind)
      && (!flagged || (q.flags || []).length > 0);
  });
}

function table() {
  const rows = visible();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  page = Math.min(page, pages - 1);
  const body = document.querySelector("#quantizers tbody");
  body.replaceChildren();
  for (const i of rows.slice(page * PAGE, (page + 1) * PAGE)) {
    const q = Q[i];
    const tr = el("tr", {class: "row" + (i === selected ? " selected" : ""), "data-index": i});
    for (const c of COLUMNS) {
      const td = el("td", c.num ? {class: "num"} : {}, c.get(q));
      if (c.range && c.range(q)) td.append(el("div", {class: "range-cell"}, c.range(q)));
      if (c.key === "best" || c.key === q.best) td.classList.add("best");
      if (c.key === "flags" && (q.flags || []).length) td.classList.add("flag");
      tr.append(td);
    }
    tr.addEventListener("click", () => choose(i));
    body.append(tr);
  }
  document.getElementById("count").textContent = `${rows.length} of ${Q.length} quantizers`;
  document.getElementById("page").textContent = `page ${page + 1} of ${pages}`;
  document.getElementById("prev").disabled = page === 0;
  document.getElementById("next").disabled = page >= pages - 1;
}

function choose(i) {
  selected = i;
  for (const tr of document.querySelectorAll("#quantizers tr.row"))
    tr.classList.toggle("selected", Number(tr.dataset.index) === i);
  draw();
}

function draw() {
  const chart = document.getElementById("chart"), legend = document.getElementById("legend");
  chart.replaceChildren(); legend.replaceChildren();
  document.getElementById("batches").replaceChildren();
  if (selected === null) return;
  const q = Q[selected];
  document.getElementById("chart-title").textContent = `${q.name} (${q.kind})`;
  const h = q.hist;
  if (!h) { chart.append(el("p", {class: "muted"}, "no finite value to show")); return; }
  document.getElementById("chart-controls").hidden = false;
  const W = 760, H = 300, L = 50, R = 10, T = 10, B = 30;
  const ranges = Object.entries(q.methods || {}).filter(([, r]) => r.min !== null && r.max !== null);
  let lo = h.lo, hi = h.hi;
  for (const [, r] of ranges) { lo = Math.min(lo, r.min); hi = Math.max(hi, r.max); }
  const pad = (hi - lo) * 0.02 || 1; lo -= pad; hi += pad;
  const x = v => L + (v - lo) / (hi - lo) * (W - L - R);
  const log = document.getElementById("log").checked;
  const top = h.counts.reduce((m, c) => Math.max(m, c), 1);
  const y = c => {
    const f = log ? Math.log10(1 + c) / Math.log10(1 + top) : c / top;
    return H - B - f * (H - T - B);
  };
  const s = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, id: "histogram"});
  const width = (h.hi - h.lo) / h.counts.length;
  h.counts.forEach((c, k) => {
    if (!c) return;
    const x0 = x(h.lo + k * width), x1 = x(h.lo + (k + 1) * width);
    s.append(svg("rect", {x: x0, y: y(c), width: Math.max(0.5, x1 - x0), height: H - B - y(c),
      fill: "#999", class: "bar"}));
  });
  s.append(svg("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#444"}));
  for (const [v, anchor] of [[lo, "start"], [(lo + hi) / 2, "middle"], [hi, "end"]]) {
    const t = svg("text", {x: x(v), y: H - B + 16, "text-anchor": anchor, "font-size": 11});
    t.textContent = fmt(v, 3); s.append(t);
  }
  const ylabel = svg("text", {x: 4, y: T + 10, "font-size": 11});
  ylabel.textContent = log ? "count (log)" : "count"; s.append(ylabel);
  ranges.forEach(([m, r], k) => {
    for (const v of [r.min, r.max])
      s.append(svg("line", {x1: x(v), x2: x(v), y1: T + 2 * k, y2: H - B, stroke: color(m),
        "stroke-width": m === q.best ? 2.5 : 1.5, "stroke-dasharray": "5,3", class: "range"}));
    const item = el("span");
    item.append(el("span", {class: "swatch", style: `background:${color(m)}`}),
      document.createTextNode(`${m}: [${fmt(r.min)}, ${fmt(r.max)}], ${db(r.sqnr_db)} dB` +
        (m === q.best ? " (in use)" : "")));
    legend.append(item);
  });
  chart.append(s);
  if (q.batches && q.batches.length > 1) batches(q);
}

function batches(q) {
  const W = 760, H = 180, L = 50, R = 10, T = 10, B = 30;
  const n = q.batches.length;
  const lo = q.batches.reduce((m, b) => Math.min(m, b[0]), Infinity), hi = q.batches.reduce((m, b) => Math.max(m, b[1]), -Infinity);
  const span = (hi - lo) || 1;
  const x = k => L + k / Math.max(1, n - 1) * (W - L - R);
  const y = v => H - B - (v - lo) / span * (H - T - B);
  const s = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, id: "batch-ranges"});
  for (const [j, c] of [[0, "#1f77b4"], [1, "#d62728"]]) {
    const pts = q.batches.map((b, k) => `${x(k)},${y(b[j])}`).join(" ");
    s.append(svg("polyline", {points: pts, fill: "none", stroke: c, "stroke-width": 1.5}));
  }
  const t = svg("text", {x: L, y: H - 8, "font-size": 11});
  t.textContent = `each batch's min (blue) and max (red), ${n} batches; y from ${fmt(lo)} to ${fmt(hi)}`;
  s.append(t);
  const box = document.getElementById("batches");
  box.append(el("h3", {}, "Range per calibration batch"), s);
}

if (AGREE) {
  document.getElementById("comparison-title").textContent = "The model's output agreement by method";
  document.getElementById("sensitivity-text").textContent = "The percentage of the model's " +
    "outputs equal to the float model's when only this layer's weights, or only its " +
    "activations, are quantized, everything else in floating point; most sensitive first.";
}
summary(); comparison(); sensitivity(); header(); table();
document.getElementById("filter").addEventListener("input", () => { page = 0; table(); });
document.getElementById("kind").addEventListener("change", () => { page = 0; table(); });
document.getElementById("flagged").addEventListener("change", () => { page = 0; table(); });
document.getElementById("prev").addEventListener("click", () => { page--; table(); });
document.getElementById("next").addEventListener("click", () => { page++; table(); });
document.getElementById("log").addEventListener("change", draw);
</script>
</body>
</html>
"""
