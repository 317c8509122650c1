"""An answer as one self-contained HTML map page: no CDN, no JavaScript library, works offline and
from a ``file://`` URL.

The mosaic's overview is the basemap (a PNG inlined as a data URI, drawn in the mosaic's own CRS),
each region a polygon coloured by its confidence, near-misses dashed, and every region gets an
evidence thumbnail at full resolution (also laid on the map, so zooming in shows detail) and its
score breakdown. Pan with the mouse, zoom with the wheel, click a region in the list to fly to it.
The URL hash toggles layers (``#regions=0``, ``#near=0``, ``#basemap=0``, ``#only=answer-1``), which
the headless-browser test uses to tell overlays from imagery.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import numpy as np
import shapely
from shapely.geometry import box, shape

from geosearch.geo import WGS84, reproject_geom, transformer
from geosearch.index import TileIndex
from geosearch.render import render_png

BASEMAP_SIDE = 1600
THUMB_SIDE = 512


def confidence_colour(conf: float | None) -> str:
    """Red (low) → amber → green (high); grey when the region was not calibrated."""
    if conf is None:
        return "#9e9e9e"
    c = float(np.clip(conf, 0.0, 1.0))
    stops = [(0.0, (215, 48, 39)), (0.5, (254, 196, 79)), (1.0, (26, 152, 80))]
    for (a, ca), (b, cb) in zip(stops, stops[1:]):
        if c <= b:
            t = (c - a) / (b - a)
            rgb = [round(x + (y - x) * t) for x, y in zip(ca, cb)]
            return "#{:02x}{:02x}{:02x}".format(*rgb)
    return "#1a9850"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _pixel_to_lonlat(bounds, size: tuple[int, int], crs) -> list[float]:
    """An affine fit (6 numbers) from basemap pixel to lon/lat, for the cursor readout."""
    x0, y0, x1, y1 = bounds
    w, h = size
    cols, rows = np.meshgrid(np.linspace(0, w, 5), np.linspace(0, h, 5))
    xs = x0 + cols.ravel() / w * (x1 - x0)
    ys = y1 - rows.ravel() / h * (y1 - y0)
    lon, lat = transformer(crs, WGS84).transform(xs, ys)
    a = np.column_stack([cols.ravel(), rows.ravel(), np.ones(cols.size)])
    cx, *_ = np.linalg.lstsq(a, np.asarray(lon), rcond=None)
    cy, *_ = np.linalg.lstsq(a, np.asarray(lat), rcond=None)
    return [float(v) for v in (*cx, *cy)]


def answer_map_html(index: TileIndex, geojson: dict[str, Any], *, title: str | None = None) -> str:
    """The page for one answer (a FeatureCollection as :meth:`Answer.geojson` makes it, EPSG:4326)."""
    mosaic = index.mosaic()
    mb = mosaic.bounds
    props = geojson.get("properties") or {}
    feats = [("region", f) for f in geojson.get("features") or []]
    feats += [("near", f) for f in props.get("near_misses") or []]

    # basemap extent: the whole mosaic, unless it is far larger than what the answer covers
    geoms_map = [reproject_geom(shape(f["geometry"]), WGS84, mosaic.crs) for _, f in feats]
    extent = mb
    if geoms_map:
        ax0, ay0, ax1, ay1 = (float(v) for v in shapely.total_bounds(geoms_map))
        side = max(ax1 - ax0, ay1 - ay0, 1e-9)
        if max(mb[2] - mb[0], mb[3] - mb[1]) > 20 * side:
            pad = 2.0 * side
            extent = (
                max(mb[0], ax0 - pad),
                max(mb[1], ay0 - pad),
                min(mb[2], ax1 + pad),
                min(mb[3], ay1 + pad),
            )
    ex0, ey0, ex1, ey1 = extent
    ew, eh = ex1 - ex0, ey1 - ey0
    scale = BASEMAP_SIDE / max(ew, eh)
    width, height = max(1, round(ew * scale)), max(1, round(eh * scale))
    basemap = render_png(index, extent, max_side=BASEMAP_SIDE)

    def px(xs, ys) -> list[list[float]]:
        return [[round((x - ex0) * scale, 2), round((ey1 - y) * scale, 2)] for x, y in zip(xs, ys)]

    items = []
    for rank, ((kind, f), gm) in enumerate(zip(feats, geoms_map), start=1):
        p = dict(f.get("properties") or {})
        rings = [px(*np.asarray(poly.exterior.coords).T[:2]) for poly in _polygons(gm)]
        bx0, by0, bx1, by1 = gm.bounds
        pad = 0.25 * max(bx1 - bx0, by1 - by0)
        tb = (bx0 - pad, by0 - pad, bx1 + pad, by1 + pad)
        tb = (max(tb[0], mb[0]), max(tb[1], mb[1]), min(tb[2], mb[2]), min(tb[3], mb[3]))
        thumb = None
        if tb[2] > tb[0] and tb[3] > tb[1]:
            outline = [gm] if rings else [box(bx0, by0, bx1, by1)]
            thumb = {
                "src": _data_uri(render_png(index, tb, max_side=THUMB_SIDE, outlines=outline)),
                "plain": _data_uri(render_png(index, tb, max_side=THUMB_SIDE)),
                "box": px([tb[0], tb[2]], [tb[3], tb[1]]),
            }
        items.append(
            {
                "kind": kind,
                "rank": rank,
                "id": str(p.get("id", f"r{rank}")),
                "score": p.get("score"),
                "confidence": p.get("confidence"),
                "colour": confidence_colour(p.get("confidence")) if kind == "region" else "#e040fb",
                "flags": p.get("flags") or [],
                "scale_m": p.get("scale_m"),
                # the score breakdown; a proposal's id is not a score
                "features": {k: v for k, v in (p.get("features") or {}).items() if k != "proposal"},
                "relations": p.get("relations") or [],
                "rings": rings,
                "thumb": thumb,
            }
        )
    explanation = props.get("explanation") or ""
    if props.get("abstained") and props.get("reason"):  # the status box shows the reason already
        from geosearch.pipeline import not_found_sentence

        explanation = explanation.removeprefix(
            not_found_sentence(props.get("query"), props["reason"])
        ).strip()
    meta = {
        "query": props.get("query"),
        "method": props.get("method"),
        "abstained": bool(props.get("abstained")),
        "reason": props.get("reason"),
        "explanation": explanation,
        "index": props.get("index"),
        "model": props.get("model") or index.meta.get("model_id"),
        "created": props.get("created"),
        "crs": str(mosaic.crs),
        "extent_wgs84": list(_extent_wgs84(extent, mosaic.crs)),
    }
    data = {
        "width": width,
        "height": height,
        "basemap": _data_uri(basemap),
        "affine": _pixel_to_lonlat(extent, (width, height), mosaic.crs),
        "items": items,
        "meta": meta,
    }
    page_title = title or f"GeoSearch: {meta['query'] or 'answer'}"
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    return _PAGE.replace("__TITLE__", html.escape(page_title)).replace("__DATA__", payload)


def _polygons(g) -> list:
    return [p for p in getattr(g, "geoms", [g]) if hasattr(p, "exterior")]


def _extent_wgs84(extent, crs) -> tuple[float, float, float, float]:
    from geosearch.geo import reproject_bounds

    return reproject_bounds(extent, crs, WGS84)


_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
html,body{margin:0;height:100%;font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222}
#wrap{display:flex;height:100%}
#map{flex:1 1 auto;position:relative;background:#20242a;overflow:hidden;cursor:grab}
#map svg{width:100%;height:100%;display:block}
#side{flex:0 0 340px;overflow-y:auto;border-left:1px solid #ccc;padding:10px 12px;background:#fafafa}
h1{font-size:15px;margin:0 0 6px}
.status{padding:6px 8px;border-radius:4px;margin:6px 0}
.found{background:#e8f5e9}.notfound{background:#fff3e0}
.item{border:1px solid #ddd;border-radius:4px;padding:6px;margin:8px 0;background:#fff;cursor:pointer}
.item:hover{border-color:#666}.item img{width:100%;image-rendering:auto;display:block;margin-top:4px}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-2px;margin-right:4px}
table.kv{border-collapse:collapse;width:100%;font-size:12px}table.kv td{padding:0 4px}
table.kv td:last-child{text-align:right;font-variant-numeric:tabular-nums}
#coords:empty{display:none}
#coords{position:absolute;left:8px;bottom:8px;background:rgba(0,0,0,.6);color:#fff;padding:2px 6px;border-radius:3px;font-size:12px}
#layers{position:absolute;right:8px;top:8px;background:rgba(255,255,255,.9);padding:4px 8px;border-radius:4px}
#legend{position:absolute;left:8px;top:8px;background:rgba(255,255,255,.9);padding:4px 8px;border-radius:4px;font-size:12px}
.ramp{display:inline-block;width:90px;height:10px;vertical-align:-1px;background:linear-gradient(90deg,#d73027,#fec44f,#1a9850)}
.muted{color:#666}.flag{background:#eee;border-radius:3px;padding:0 4px;margin-right:3px;font-size:11px}
</style></head>
<body><div id="wrap"><div id="map"><svg id="svg" xmlns="http://www.w3.org/2000/svg"></svg>
<div id="legend"><span class="ramp"></span> confidence 0 → 1 &nbsp; <span style="border-top:2px dashed #e040fb;display:inline-block;width:18px;vertical-align:3px"></span> near-miss</div>
<div id="layers"><label><input type="checkbox" id="l-basemap" checked> imagery</label>
<label><input type="checkbox" id="l-regions" checked> regions</label>
<label><input type="checkbox" id="l-near" checked> near-misses</label></div>
<div id="coords"></div></div><div id="side"></div></div>
<script id="geosearch-data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("geosearch-data").textContent);
const NS = "http://www.w3.org/2000/svg";
const svg = document.getElementById("svg"), side = document.getElementById("side");
const esc = s => String(s == null ? "" : s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const fmt = v => typeof v === "number" ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3)) : esc(v);
function el(tag, attrs, parent) { const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]); if (parent) parent.appendChild(e); return e; }
let vb = [0, 0, D.width, D.height];
function setVB() { svg.setAttribute("viewBox", vb.join(" ")); }
svg.setAttribute("preserveAspectRatio", "xMidYMid meet"); setVB();
const gBase = el("g", {id: "basemap"}, svg);
el("image", {href: D.basemap, x: 0, y: 0, width: D.width, height: D.height, preserveAspectRatio: "none"}, gBase);
const gThumbs = el("g", {id: "detail"}, gBase);
const gNear = el("g", {id: "near"}, svg), gReg = el("g", {id: "regions"}, svg);
const sw = Math.max(D.width, D.height) / 400;
for (const it of [...D.items].reverse()) {
  if (it.thumb) { const [[x0, y0], [x1, y1]] = it.thumb.box;
    el("image", {href: it.thumb.plain, x: x0, y: y0, width: x1 - x0, height: y1 - y0, preserveAspectRatio: "none"}, gThumbs); }
  const g = el("g", {class: "feat", "data-id": it.id}, it.kind === "region" ? gReg : gNear);
  for (const ring of it.rings) {
    const d = "M" + ring.map(p => p.join(",")).join("L") + "Z";
    const a = {d: d, fill: it.colour, "fill-opacity": it.kind === "region" ? 0.28 : 0.08, stroke: it.colour,
      "stroke-width": sw, "vector-effect": "non-scaling-stroke"};
    if (it.kind !== "region") a["stroke-dasharray"] = "6 4";
    el("path", {d: d, fill: "none", stroke: "#fff", "stroke-opacity": 0.85, "stroke-width": sw * 2.2,
      "vector-effect": "non-scaling-stroke"}, g);  // a halo keeps the outline visible on any imagery
    const path = el("path", a, g);
    el("title", {}, path).textContent = `${it.id}  score ${fmt(it.score)}  confidence ${fmt(it.confidence)}`;
  }
  if (it.rings.length && it.kind === "region") { const r = it.rings[0];
    const x = Math.min(...r.map(p => p[0])), y = Math.min(...r.map(p => p[1]));
    const t = el("text", {x: x, y: y, "font-size": sw * 7, fill: "#fff", stroke: "#000", "stroke-width": sw * 0.6,
      "paint-order": "stroke", "font-weight": "bold"}, g); t.textContent = it.rank; }
}
const M = D.meta;
let h = `<h1>${esc(M.query)}</h1>`;
h += M.abstained ? `<div class="status notfound"><b>Not found.</b> ${esc(String(M.reason || "").replace(/^not found:\s*/i, ""))}</div>`
  : `<div class="status found"><b>${D.items.filter(i => i.kind === "region").length} region(s)</b> by <code>${esc(M.method)}</code></div>`;
if (M.explanation) h += `<p>${esc(M.explanation)}</p>`;
h += `<p class="muted">index ${esc(M.index)}<br>model ${esc(M.model)}<br>${esc(M.crs)}${M.created ? "<br>" + esc(M.created) : ""}</p>`;
for (const it of D.items) {
  const rows = Object.entries(it.features).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${fmt(v)}</td></tr>`).join("");
  const rels = it.relations.map(r => `<div class="muted">${esc(r.negated ? "not " : "")}${esc(r.predicate || r.relation || "")} ${esc(r.layer || "")}${r.value != null ? " (" + fmt(r.value) + " " + esc(r.unit || "") + ")" : ""}: ${(r.satisfied != null ? r.satisfied : r.holds) ? "✓" : "✗"}</div>`).join("");
  h += `<div class="item" data-id="${esc(it.id)}"><span class="sw" style="background:${it.colour}"></span>
    <b>${it.kind === "region" ? "#" + it.rank : "near-miss"} ${esc(it.id)}</b>
    <table class="kv"><tr><td>score</td><td>${fmt(it.score)}</td></tr><tr><td>confidence</td><td>${fmt(it.confidence)}</td></tr>
    ${it.scale_m ? `<tr><td>scale (m)</td><td>${fmt(it.scale_m)}</td></tr>` : ""}${rows}</table>
    ${it.flags.map(f => `<span class="flag">${esc(f)}</span>`).join("")}${rels}
    ${it.thumb ? `<img alt="evidence for ${esc(it.id)}" src="${it.thumb.src}">` : ""}</div>`;
}
side.innerHTML = h;
function flyTo(id) { const it = D.items.find(i => i.id === id); if (!it || !it.rings.length) return;
  const pts = it.rings.flat(); const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const s = Math.max(x1 - x0, y1 - y0) * 2.2 + 1; vb = [(x0 + x1 - s) / 2, (y0 + y1 - s) / 2, s, s]; setVB(); }
side.querySelectorAll(".item").forEach(n => n.addEventListener("click", () => flyTo(n.dataset.id)));
function toScreen(ev) { const p = svg.createSVGPoint(); p.x = ev.clientX; p.y = ev.clientY;
  return p.matrixTransform(svg.getScreenCTM().inverse()); }
svg.addEventListener("wheel", ev => { ev.preventDefault(); const p = toScreen(ev); const f = ev.deltaY > 0 ? 1.25 : 0.8;
  vb = [p.x - (p.x - vb[0]) * f, p.y - (p.y - vb[1]) * f, vb[2] * f, vb[3] * f]; setVB(); }, {passive: false});
let drag = null;
svg.addEventListener("mousedown", ev => { drag = toScreen(ev); });
window.addEventListener("mouseup", () => { drag = null; });
svg.addEventListener("mousemove", ev => { const p = toScreen(ev); const a = D.affine;
  document.getElementById("coords").textContent = `${(a[0]*p.x + a[1]*p.y + a[2]).toFixed(6)}, ${(a[3]*p.x + a[4]*p.y + a[5]).toFixed(6)}`;
  if (drag) { vb[0] += drag.x - p.x; vb[1] += drag.y - p.y; setVB(); } });
function layers() { for (const [k, g] of [["basemap", gBase], ["regions", gReg], ["near", gNear]])
  g.style.display = document.getElementById("l-" + k).checked ? "" : "none"; }
document.querySelectorAll("#layers input").forEach(n => n.addEventListener("change", layers));
const hp = new URLSearchParams(location.hash.slice(1));
for (const k of ["basemap", "regions", "near"]) if (hp.get(k) === "0") document.getElementById("l-" + k).checked = false;
if (hp.get("only")) document.querySelectorAll(".feat").forEach(n => { if (n.dataset.id !== hp.get("only")) n.style.display = "none"; });
if (hp.get("ui") === "0") ["legend", "layers", "coords"].forEach(i => document.getElementById(i).style.display = "none");
layers();
</script></body></html>
"""
