"""Coarse-to-fine pyramid search (after LRS-VQA's Dynamic Image Pyramid).

The coarse index ranks every stored tile by cosine similarity with the query. The top-N tiles
(non-maximum suppressed, so that N different places are explored) are split into overlapping
sub-windows ``factor`` times their side (default: half the side, 50 % overlap, 3 x 3 = 9
children). Each sub-window is read *on the fly* at the model's input size with
:meth:`Mosaic.read` (GDAL uses overviews / decimation as needed) and embedded. Per parent the
``keep`` most text-salient children whose score beats their parent's are kept and split again,
level by level, while the score improves, until ``depth`` levels or ``budget`` embedded windows
are spent. Every read is counted by the mosaic (``mosaic.stats.full_res_reads`` counts the reads
whose output resolution is within 1.5x of native), and :func:`dense_window_count` gives what a
dense tiling at the finest reached scale would have embedded, for the cost comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from geosearch.geo import Bounds, nms_boxes
from geosearch.index import TileIndex
from geosearch.refine.common import embed_windows, query_vector
from geosearch.search import context_ranked
from geosearch.settings import get_settings
from geosearch.tiling import tiles_for_mosaic


@dataclass
class Window:
    """A scored window of the mosaic: ``bounds`` in the mosaic CRS, ``scale_m`` its width in metres,
    ``level`` 0 for a stored coarse tile, n for the n-th zoom step below it."""

    bounds: Bounds
    score: float
    scale_m: float
    level: int
    tile_id: str | None = None  # the coarse tile it descends from
    parent_score: float | None = None
    valid_fraction: float = 1.0

    def polygon(self):
        from shapely.geometry import box

        return box(*self.bounds)


@dataclass
class PyramidResult:
    windows: list[Window]  # every scored window (coarse + zoomed), best first
    explored: list[Window]  # the coarse tiles that were zoomed into
    windows_embedded: int  # windows embedded on the fly
    full_res_reads: int  # reads counted by the mosaic during the search
    finest_scale_m: float | None  # smallest window width reached
    text_vector: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))


def child_bounds(bounds: Bounds, factor: float = 0.5, overlap: float = 0.5) -> list[Bounds]:
    """Overlapping sub-windows ``factor`` x the side of ``bounds``, stepping by (1 - overlap)."""
    x0, y0, x1, y1 = bounds
    w, h = x1 - x0, y1 - y0
    sw, sh = w * factor, h * factor
    nx = int(math.ceil((w - sw) / (sw * (1 - overlap)) - 1e-9)) + 1
    ny = int(math.ceil((h - sh) / (sh * (1 - overlap)) - 1e-9)) + 1
    xs = [min(x0 + i * sw * (1 - overlap), x1 - sw) for i in range(nx)]
    ys = [min(y0 + j * sh * (1 - overlap), y1 - sh) for j in range(ny)]
    return [(bx, by, bx + sw, by + sh) for by in reversed(ys) for bx in xs]


def zoom(
    index: TileIndex,
    bounds: Bounds,
    prompts: str | Sequence[str] | np.ndarray,
    *,
    factor: float = 0.5,
    overlap: float = 0.5,
    level: int = 1,
    scale_m: float | None = None,
    tile_id: str | None = None,
    min_valid: float = 0.05,
) -> list[Window]:
    """One pyramid step: the sub-windows of ``bounds`` scored against the prompts, best first."""
    vec = query_vector(index, prompts)
    return _zoom_many(index, [(bounds, scale_m, tile_id, None)], vec, factor, overlap, level, min_valid)[0]


def _zoom_many(
    index: TileIndex,
    parents: list[tuple[Bounds, float | None, str | None, float | None]],
    vec: np.ndarray,
    factor: float,
    overlap: float,
    level: int,
    min_valid: float,
) -> list[list[Window]]:
    """Zoom into several parents with one batched embedding call."""
    from geosearch.refine.common import window_scale_m

    kids: list[list[Bounds]] = [child_bounds(b, factor, overlap) for b, *_ in parents]
    flat = [c for ks in kids for c in ks]
    emb, valid = embed_windows(index, flat)
    sc = emb @ vec if len(flat) else np.zeros(0)
    out: list[list[Window]] = []
    pos = 0
    for (b, scale, tid, pscore), ks in zip(parents, kids):
        cscale = (scale if scale is not None else window_scale_m(index, b)) * factor
        wins = [
            Window(
                tuple(float(v) for v in c),
                float(sc[pos + i]),
                float(cscale),
                level,
                tid,
                pscore,
                float(valid[pos + i]),
            )
            for i, c in enumerate(ks)
            if valid[pos + i] >= min_valid
        ]
        wins.sort(key=lambda w: -w.score)
        out.append(wins)
        pos += len(ks)
    return out


def coarse_candidates(
    index: TileIndex,
    vec: np.ndarray,
    n: int,
    nms_iou: float = 0.3,
    pool: int = 200,
    mask: np.ndarray | None = None,
    context: float | None = None,
) -> list[Window]:
    """Top-``n`` coarse tiles (among ``mask``, ranked as coarse search ranks them: with their
    neighbourhood, weight ``context``) after greedy non-maximum suppression (distinct places).
    The windows carry the tiles' own scores."""
    s = index.embeddings @ vec
    order = context_ranked(index, vec, min(pool, len(s)), mask, context)[0]
    keep = nms_boxes(index.bounds[order], n, nms_iou, strict=True)
    return [tile_window(index, int(order[j]), s) for j in keep]


def tile_window(index: TileIndex, i: int, scores: np.ndarray) -> Window:
    """Stored tile ``i`` as a level-0 window with its score."""
    return Window(
        tuple(float(v) for v in index.bounds[i]),
        float(scores[i]),
        float(index.scales[i]),
        0,
        str(index.tile_ids[i]),
    )


def pyramid_search(
    index: TileIndex,
    prompts: str | Sequence[str] | np.ndarray,
    k: int = 10,
    *,
    top_n: int | None = None,
    depth: int | None = None,
    budget: int | None = None,
    keep: int = 2,
    factor: float = 0.5,
    overlap: float = 0.5,
    min_scale_m: float = 0.0,
    require_improvement: bool = True,
    nms_iou: float = 0.3,
    min_valid: float = 0.05,
    mask: np.ndarray | None = None,
    context: float | None = None,
) -> PyramidResult:
    """Coarse-to-fine search: returns every scored window (best first) and the cost counters.

    ``top_n``, ``depth`` and ``budget`` (windows embedded per query) default to the settings
    ``pyramid_top_n``, ``pyramid_depth`` and ``pyramid_budget``; ``k`` only bounds how many coarse
    tiles are kept in ``windows`` besides the explored ones. ``mask`` (one bool per tile) restricts
    the coarse tiles to an area or a date.
    """
    st = get_settings()
    top_n = st.pyramid_top_n if top_n is None else top_n
    depth = st.pyramid_depth if depth is None else depth
    budget = st.pyramid_budget if budget is None else budget
    vec = query_vector(index, prompts)
    mosaic = index.mosaic()
    reads0 = mosaic.stats.full_res_reads
    explored = coarse_candidates(index, vec, top_n, nms_iou, mask=mask, context=context)
    windows: list[Window] = list(explored)
    # keep the other best coarse tiles too, so that refinement never loses what coarse search found
    s = index.embeddings @ vec
    seen = {w.tile_id for w in explored}
    for i in context_ranked(index, vec, max(k, top_n) * 2, mask, context)[0]:
        if str(index.tile_ids[i]) not in seen:
            windows.append(tile_window(index, int(i), s))
    frontier = list(explored)
    embedded = 0
    finest: float | None = None
    per_parent = len(child_bounds((0.0, 0.0, 1.0, 1.0), factor, overlap))
    for level in range(1, depth + 1):
        frontier = [w for w in frontier if w.scale_m * factor >= min_scale_m - 1e-9]
        room = (budget - embedded) // per_parent
        if room <= 0 or not frontier:
            break
        frontier = sorted(frontier, key=lambda w: -w.score)[:room]
        groups = _zoom_many(
            index,
            [(w.bounds, w.scale_m, w.tile_id, w.score) for w in frontier],
            vec,
            factor,
            overlap,
            level,
            min_valid,
        )
        embedded += per_parent * len(frontier)
        nxt: list[Window] = []
        for parent, kids in zip(frontier, groups):
            windows.extend(kids)
            if kids:
                finest = kids[0].scale_m if finest is None else min(finest, kids[0].scale_m)
            better = [c for c in kids if c.score > parent.score] if require_improvement else kids
            nxt.extend(better[:keep])
        frontier = nxt
    windows.sort(key=lambda w: -w.score)
    return PyramidResult(windows, explored, embedded, mosaic.stats.full_res_reads - reads0, finest, vec)


def dense_window_count(
    index: TileIndex, scale_m: float, overlap: float | None = None, full_res_only: bool = False
) -> int:
    """How many windows a dense tiling of the whole mosaic at ``scale_m`` (same overlap as the
    index, same nodata rule) would embed; with ``full_res_only`` 0 when such windows would not be
    full-resolution reads at the model's input size."""
    tiling = index.meta.get("tiling", {})
    overlap = float(tiling.get("overlap", 0.5)) if overlap is None else overlap
    mosaic = index.mosaic()
    if full_res_only:
        px = scale_m / mosaic.pixel_size_m[0] / index.model().image_size
        if px > 1.5:
            return 0
    tiles, _ = tiles_for_mosaic(mosaic, [scale_m], overlap, float(tiling.get("min_valid_fraction", 0.05)))
    return len(tiles)


_DENSE: dict[tuple[str, float], int] = {}


def dense_count(index: TileIndex, scale_m: float | None) -> int | None:
    """:func:`dense_window_count` at ``scale_m``, cached per index and scale: the cost baseline of
    the benchmarks (seconds on a large mosaic, so never computed while answering)."""
    if scale_m is None:
        return None
    key = (str(index.path), round(float(scale_m), 6))
    if key not in _DENSE:
        _DENSE[key] = dense_window_count(index, float(scale_m))
    return _DENSE[key]
