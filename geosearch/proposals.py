"""Region proposals that follow image boundaries, computed once when an index is built.

The mosaic is read at a working resolution (``gsd_m``, coarse enough that the smallest proposal of
interest still spans about ten pixels) in overlapping blocks. In each block:

1. **superpixels**: Felzenszwalb's graph-based segmentation (scikit-image), at two scales;
2. **hierarchical grouping** (selective search, Uijlings et al. 2013): adjacent regions are merged
   greedily, most similar pair first, by colour (histogram intersection), texture (local binary
   pattern histograms), size (small regions merge first) and fill (regions whose union fills its
   bounding box merge first). Every region of the hierarchy, from the superpixels up to the whole
   connected component, is a proposal;
3. proposals outside the size range (``min_side_m`` .. ``max_side_m``), very elongated ones and
   near-duplicates (box IoU >= ``dedup_iou``) are dropped;
4. each kept proposal gets its outline (the union of its superpixels, vectorised and simplified).

The index then embeds every proposal at its own extent, in the framing the reranker and the
calibration use (:func:`geosearch.refine.rerank.square_around`), so a query scores every proposal
of the whole mosaic with one matrix product and no read (:mod:`geosearch.refine.proposed`).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from rasterio.features import shapes
from rasterio.transform import Affine
from shapely.geometry import box, shape

from geosearch.geo import Bounds, nms_boxes
from geosearch.mosaic import Mosaic

COLOUR_BINS = 25
LBP_BINS = 10  # uniform LBP, P=8: values 0..9


@dataclass
class ProposalSettings:
    """What the proposal step looks for (recorded in the index meta)."""

    min_side_m: float = 48.0
    max_side_m: float = 1200.0
    max_aspect: float = 4.0
    block_px: int = 1024  # working-resolution block side (blocks overlap by ``max_side_m``)
    px_per_min_side: float = 8.0  # the smallest proposal spans this many working pixels
    fz_scales: tuple[float, ...] = (100.0, 300.0, 800.0)  # Felzenszwalb ``scale`` per diversification
    fz_sigma: float = 0.8
    dedup_iou: float = 0.85
    max_per_km2: float = 400.0  # cap, best-grouped first (never more than this many per km²)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class Proposal:
    """A proposed region in the mosaic CRS: its bounding box, its outline and its grouping level
    (0 = a superpixel, higher = merged from more)."""

    bounds: Bounds
    polygon: object  # shapely geometry, mosaic CRS
    level: int
    n_segments: int
    extra: dict = field(default_factory=dict)


# --- region features -------------------------------------------------------------------------
def _region_histograms(img: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-label colour (3 x 25 bins) and texture (3 x 10 LBP bins) histograms, L1-normalised."""
    from skimage.feature import local_binary_pattern

    flat = labels.ravel()
    col, tex = [], []
    for ch in range(3):
        band = img[..., ch]
        cb = np.minimum((band.astype(np.int32) * COLOUR_BINS) // 256, COLOUR_BINS - 1).ravel()
        col.append(np.bincount(flat * COLOUR_BINS + cb, minlength=n * COLOUR_BINS).reshape(n, COLOUR_BINS))
        lbp = local_binary_pattern(band, 8, 1.0, method="uniform").astype(np.int32).ravel()
        lbp = np.clip(lbp, 0, LBP_BINS - 1)
        tex.append(np.bincount(flat * LBP_BINS + lbp, minlength=n * LBP_BINS).reshape(n, LBP_BINS))
    c = np.concatenate(col, axis=1).astype(np.float64)
    t = np.concatenate(tex, axis=1).astype(np.float64)
    c /= np.maximum(c.sum(axis=1, keepdims=True), 1)
    t /= np.maximum(t.sum(axis=1, keepdims=True), 1)
    return c, t


def _adjacent_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        diff = a != b
        lo = np.minimum(a[diff], b[diff]).astype(np.int64)
        hi = np.maximum(a[diff], b[diff]).astype(np.int64)
        for key in np.unique(lo * (1 << 32) + hi):
            pairs.add((int(key >> 32), int(key & 0xFFFFFFFF)))
    return pairs


def hierarchical_grouping(
    img: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None, max_side_px: float = np.inf
) -> list[dict]:
    """Selective-search grouping over a label image. Returns every region of the hierarchy as
    ``{"bbox": (r0, c0, r1, c1) px, "members": frozenset of superpixel labels, "level": int}``.
    Labels on invalid pixels (``valid`` False) are left out, and a region whose box grows past
    ``max_side_px`` is reported once and merges no further (nothing larger would be kept), which
    keeps the grouping near-linear on large blocks."""
    n = int(labels.max()) + 1
    flat = labels.ravel()
    size = np.bincount(flat, minlength=n).astype(np.float64)
    rows, cols = np.indices(labels.shape)
    bbox = np.empty((n, 4))
    bbox[:, 0] = np.inf
    bbox[:, 1] = np.inf
    bbox[:, 2] = -np.inf
    bbox[:, 3] = -np.inf
    np.minimum.at(bbox[:, 0], flat, rows.ravel())
    np.minimum.at(bbox[:, 1], flat, cols.ravel())
    np.maximum.at(bbox[:, 2], flat, rows.ravel() + 1)
    np.maximum.at(bbox[:, 3], flat, cols.ravel() + 1)
    colour, texture = _region_histograms(img, labels, n)
    ok = size > 0
    if valid is not None:
        ok &= np.bincount(flat, weights=valid.ravel().astype(float), minlength=n) >= 0.5 * size
    # room for every merge: region arrays grow to at most 2n - 1 rows
    cap = 2 * n
    feat = np.zeros((cap, colour.shape[1] + texture.shape[1]))
    feat[:n] = np.hstack([colour, texture])
    sizes = np.zeros(cap)
    sizes[:n] = size
    boxes = np.zeros((cap, 4))
    boxes[:n] = bbox
    members: dict[int, frozenset] = {}
    level: dict[int, int] = {}
    alive: set[int] = set()
    for i in np.flatnonzero(ok):
        members[int(i)] = frozenset([int(i)])
        level[int(i)] = 0
        alive.add(int(i))
    neighbours: dict[int, set[int]] = {i: set() for i in alive}
    for a, b in _adjacent_pairs(labels):
        if a in alive and b in alive:
            neighbours[a].add(b)
            neighbours[b].add(a)
    im_size = float(labels.size)
    n_col = colour.shape[1]

    def sims(t: int, others: np.ndarray) -> np.ndarray:
        inter = np.minimum(feat[others], feat[t])
        s_col = inter[:, :n_col].sum(axis=1)
        s_tex = inter[:, n_col:].sum(axis=1)
        s_size = 1.0 - (sizes[others] + sizes[t]) / im_size
        bb = (np.maximum(boxes[others, 2], boxes[t, 2]) - np.minimum(boxes[others, 0], boxes[t, 0])) * (
            np.maximum(boxes[others, 3], boxes[t, 3]) - np.minimum(boxes[others, 1], boxes[t, 1])
        )
        s_fill = 1.0 - (bb - sizes[others] - sizes[t]) / im_size
        return s_col + s_tex + s_size + s_fill

    heap: list[tuple[float, int, int]] = []
    for a in alive:
        nb = np.array(sorted(b for b in neighbours[a] if b > a), dtype=np.int64)
        if len(nb):
            heap += [(-float(v), a, int(b)) for v, b in zip(sims(a, nb), nb)]
    heapq.heapify(heap)
    out = [{"bbox": tuple(boxes[i]), "members": members[i], "level": 0} for i in sorted(alive)]
    next_id = n
    while heap:
        _, a, b = heapq.heappop(heap)
        if a not in alive or b not in alive:
            continue  # stale: one side was merged already
        alive -= {a, b}
        t = next_id
        next_id += 1
        s = sizes[a] + sizes[b]
        feat[t] = (feat[a] * sizes[a] + feat[b] * sizes[b]) / s
        sizes[t] = s
        boxes[t] = (
            min(boxes[a, 0], boxes[b, 0]),
            min(boxes[a, 1], boxes[b, 1]),
            max(boxes[a, 2], boxes[b, 2]),
            max(boxes[a, 3], boxes[b, 3]),
        )
        members[t] = members.pop(a) | members.pop(b)
        level[t] = max(level.pop(a), level.pop(b)) + 1
        out.append({"bbox": tuple(boxes[t]), "members": members[t], "level": level[t]})
        nb = (neighbours.pop(a) | neighbours.pop(b)) - {a, b}
        for o in nb:
            neighbours[o] -= {a, b}
        if max(boxes[t, 2] - boxes[t, 0], boxes[t, 3] - boxes[t, 1]) > max_side_px:
            members.pop(t)
            continue  # too large to be kept, and so is anything it would grow into
        alive.add(t)
        neighbours[t] = nb
        for o in nb:
            neighbours[o].add(t)
        if nb:
            arr = np.fromiter(nb, dtype=np.int64)
            for v, o in zip(sims(t, arr), arr):
                heapq.heappush(heap, (-float(v), int(o), t))
    return out


# --- the whole mosaic ------------------------------------------------------------------------
def working_gsd(mosaic: Mosaic, ps: ProposalSettings) -> float:
    native = float(min(mosaic.pixel_size_m))
    return max(native, ps.min_side_m / ps.px_per_min_side)


def _blocks(extent_px: int, block: int, overlap: int) -> list[int]:
    if extent_px <= block:
        return [0]
    stride = max(1, block - overlap)
    n = int(math.ceil((extent_px - block) / stride)) + 1
    return sorted({min(i * stride, extent_px - block) for i in range(n)})


def propose_mosaic(mosaic: Mosaic, ps: ProposalSettings | None = None) -> list[Proposal]:
    """Every proposal of the mosaic (mosaic CRS), deduplicated, best grouped first."""
    from skimage.segmentation import felzenszwalb

    ps = ps or ProposalSettings()
    gsd = working_gsd(mosaic, ps)
    mb = mosaic.bounds
    unit_x = (mb[2] - mb[0]) / (mosaic.size_px[0] * mosaic.pixel_size_m[0])  # CRS units per metre
    unit_y = (mb[3] - mb[1]) / (mosaic.size_px[1] * mosaic.pixel_size_m[1])
    width_px = max(1, int(round((mb[2] - mb[0]) / (gsd * unit_x))))
    height_px = max(1, int(round((mb[3] - mb[1]) / (gsd * unit_y))))
    overlap = min(ps.block_px // 2, int(math.ceil(ps.max_side_m / gsd)))
    px_x = (mb[2] - mb[0]) / width_px
    px_y = (mb[3] - mb[1]) / height_px
    min_px, max_px = ps.min_side_m / gsd, ps.max_side_m / gsd
    found: list[Proposal] = []
    for by in _blocks(height_px, ps.block_px, overlap):
        for bx in _blocks(width_px, ps.block_px, overlap):
            w = min(ps.block_px, width_px - bx)
            h = min(ps.block_px, height_px - by)
            x0 = mb[0] + bx * px_x
            y1 = mb[3] - by * px_y
            bounds = (x0, y1 - h * px_y, x0 + w * px_x, y1)
            data = mosaic.read(bounds, (h, w))
            img = data.rgb
            valid = data.mask if data.mask is not None else np.ones((h, w), bool)
            if valid.mean() < 0.01:
                continue
            tr = Affine(px_x, 0, x0, 0, -px_y, y1)
            for scale in ps.fz_scales:
                labels = felzenszwalb(
                    img, scale=scale, sigma=ps.fz_sigma, min_size=max(4, int(min_px * min_px / 8))
                )
                for reg in hierarchical_grouping(img, labels, valid, max_px):
                    r0, c0, r1, c1 = reg["bbox"]
                    hh, ww = r1 - r0, c1 - c0
                    if min(hh, ww) < min_px or max(hh, ww) > max_px:
                        continue
                    if max(hh, ww) / max(min(hh, ww), 1e-9) > ps.max_aspect:
                        continue
                    # a proposal cut by the block edge belongs to the neighbouring block
                    if (r0 <= 0 < by) or (c0 <= 0 < bx) or (r1 >= h and by + h < height_px):
                        continue
                    if c1 >= w and bx + w < width_px:
                        continue
                    x0r, y1r = tr @ (c0, r0)
                    x1r, y0r = tr @ (c1, r1)
                    found.append(((float(x0r), float(y0r), float(x1r), float(y1r)), reg, labels, tr))
    if not found:
        return []
    area_km2 = (mb[2] - mb[0]) / unit_x * (mb[3] - mb[1]) / unit_y / 1e6
    cap = max(50, int(ps.max_per_km2 * area_km2))
    # larger groupings first: of two near-duplicates, the one built from more superpixels stays
    order = sorted(range(len(found)), key=lambda i: -len(found[i][1]["members"]))
    boxes = np.array([found[i][0] for i in order], float)
    keep = nms_boxes(boxes, cap, ps.dedup_iou)
    return [_to_proposal(*found[order[i]]) for i in keep]


def _to_proposal(bounds: Bounds, reg: dict, labels: np.ndarray, tr: Affine) -> Proposal:
    """The proposal's outline: the union of its superpixels, vectorised and simplified."""
    r0, c0, r1, c1 = (int(v) for v in reg["bbox"])
    sub = np.isin(labels[r0:r1, c0:c1], list(reg["members"]))
    sub_tr = tr @ Affine.translation(c0, r0)
    polys = [shape(g) for g, v in shapes(sub.astype(np.uint8), mask=sub, transform=sub_tr) if v == 1]
    if polys:
        poly = shapely.union_all(polys).simplify(abs(tr.a), preserve_topology=True)
        if poly.is_empty or not poly.is_valid:
            poly = box(*bounds)
    else:
        poly = box(*bounds)
    return Proposal(bounds, poly, int(reg["level"]), len(reg["members"]))
