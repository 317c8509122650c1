"""Region proposals inside a window from a text-similarity heatmap (after GeoRSCLIP's semantic
localization).

The window is read **once** at up to ``read_px`` pixels (never finer than native), then cut in
memory into overlapping sub-crops at several relative scales (default 1/2, 1/3 of the side, 50 %
overlap, plus the whole window). Every crop is embedded and its cosine similarity with the query
vector is spread over the heatmap cells it covers; each cell gets the mean over its crops. The map
is normalised to the window's own score range, thresholded (``threshold`` of that range), split
into 8-connected components with :func:`rasterio.features.shapes`, and each component becomes a
:class:`Candidate` with its polygon, bbox and mask in the mosaic CRS and in EPSG:4326.

Backends share one interface (:class:`SegmentBackend`): :class:`HeatmapBackend` (read and embed
crops) and :class:`StoredHeatmapBackend` (from stored tile scores, no reads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rasterio.features import shapes
from rasterio.transform import Affine
from shapely.geometry import box, shape

from geosearch.geo import Bounds, box_areas, box_intersections, to_wgs84
from geosearch.index import TileIndex
from geosearch.refine.common import query_vector, window_scale_m


@dataclass
class Candidate:
    """A proposed region. Geometry in the mosaic CRS (``polygon_map``) and EPSG:4326."""

    polygon_map: object
    polygon_wgs84: object
    score: float
    bbox_map: Bounds
    mask: np.ndarray | None = field(default=None, repr=False)  # bool grid over ``mask_bounds``
    mask_bounds: Bounds | None = None
    scale_m: float | None = None
    window_score: float | None = None
    evidence_tiles: list[str] = field(default_factory=list)
    features: dict = field(default_factory=dict)  # rerank features (s_region, ...)
    flags: list[str] = field(default_factory=list)
    merged: int = 1
    # own-extent image embedding (unit), set by the reranker: the gallery agreement reads it
    embedding: np.ndarray | None = field(default=None, repr=False)

    @property
    def bbox_wgs84(self) -> Bounds:
        return tuple(self.polygon_wgs84.bounds)  # type: ignore[return-value]


@dataclass
class Heatmap:
    values: np.ndarray  # (G, G) float, mean crop similarity per cell (nan = no data)
    bounds: Bounds  # mosaic CRS
    crops_embedded: int
    crop_scores: list[tuple[Bounds, float]] = field(default_factory=list)

    @property
    def transform(self) -> Affine:
        g_rows, g_cols = self.values.shape
        x0, y0, x1, y1 = self.bounds
        return Affine((x1 - x0) / g_cols, 0, x0, 0, -(y1 - y0) / g_rows, y1)


def _crop_boxes(side: int, frac: float, overlap: float) -> list[tuple[int, int, int]]:
    """(row, col, size) pixel crops of one relative size covering a ``side`` x ``side`` image."""
    size = max(1, int(round(side * frac)))
    if size >= side:
        return [(0, 0, side)]
    stride = max(1, size * (1 - overlap))
    n = int(math.ceil((side - size) / stride - 1e-9)) + 1
    starts = sorted({min(int(round(i * stride)), side - size) for i in range(n)})
    return [(r, c, size) for r in starts for c in starts]


def similarity_heatmap(
    index: TileIndex,
    bounds: Bounds,
    prompts: str | Sequence[str] | np.ndarray,
    *,
    crop_fracs: Sequence[float] = (1.0, 0.5, 1 / 3),
    overlap: float = 0.5,
    grid: int = 24,
    read_px: int | None = None,
) -> Heatmap:
    """Mean text similarity of overlapping multi-scale crops, per cell of a ``grid`` x ``grid`` map."""
    vec = query_vector(index, prompts)
    model = index.model()
    mosaic = index.mosaic()
    native = int(round((bounds[2] - bounds[0]) / mosaic.res[0]))
    side = int(read_px or min(3 * model.image_size, 384))
    side = max(8, min(side, max(native, 8)))
    img = mosaic.read(tuple(bounds), side)
    groups: list[tuple[np.ndarray, list[tuple[float, float, float]]]] = []
    for frac in crop_fracs:  # crops of one relative size share a pixel size: one batch each
        crops, boxes = [], []
        for r, c, s in _crop_boxes(side, frac, overlap):
            if img.mask[r : r + s, c : c + s].mean() < 0.2:
                continue
            crops.append(img.rgb[r : r + s, c : c + s])
            boxes.append((r / side, c / side, s / side))
        if crops:
            groups.append((np.stack(crops), boxes))
    acc = np.zeros((grid, grid))
    cnt = np.zeros((grid, grid))
    crop_scores: list[tuple[Bounds, float]] = []
    n_crops = 0
    x0, y0, x1, y1 = bounds
    w, h = x1 - x0, y1 - y0
    if groups:
        emb = model.encode_images(np.concatenate([_fit(model, g) for g, _ in groups]))
        sc = emb @ vec
        all_boxes = [bx for _, bs in groups for bx in bs]
        n_crops = len(all_boxes)
        for (fr, fc, fs), v in zip(all_boxes, sc):
            r0, c0 = int(round(fr * grid)), int(round(fc * grid))
            r1, c1 = max(r0 + 1, int(round((fr + fs) * grid))), max(c0 + 1, int(round((fc + fs) * grid)))
            acc[r0:r1, c0:c1] += v
            cnt[r0:r1, c0:c1] += 1
            crop_scores.append(((x0 + fc * w, y1 - (fr + fs) * h, x0 + (fc + fs) * w, y1 - fr * h), float(v)))
    cell_valid = _downsample_mask(img.mask, grid)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where((cnt > 0) & cell_valid, acc / np.maximum(cnt, 1), np.nan)
    return Heatmap(values, tuple(bounds), n_crops, crop_scores)  # type: ignore[arg-type]


def heatmap_from_windows(
    bounds: Bounds,
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    grid: int = 24,
    max_frac: float = 0.6,
    min_inside: float = 0.9,
) -> Heatmap:
    """A heatmap over ``bounds`` from windows that were already scored (stored index tiles, pyramid
    windows): no read, no embedding. Windows are used when at least ``min_inside`` of them lies in
    ``bounds`` and their side is at most ``max_frac`` of its side; each cell gets the mean score of
    the windows covering it (nan where none does)."""
    x0, y0, x1, y1 = bounds
    w, h = x1 - x0, y1 - y0
    b = np.asarray(boxes, float).reshape(-1, 4)
    sc = np.asarray(scores, float).reshape(-1)
    area = box_areas(b)
    use = (box_intersections(b, bounds) >= min_inside * area) & ((b[:, 2] - b[:, 0]) <= max_frac * w + 1e-9)
    acc = np.zeros((grid, grid))
    cnt = np.zeros((grid, grid))
    crop_scores = []
    for (bx0, by0, bx1, by1), v in zip(b[use], sc[use]):
        c0 = int(np.clip(round((bx0 - x0) / w * grid), 0, grid - 1))
        c1 = int(np.clip(round((bx1 - x0) / w * grid), c0 + 1, grid))
        r0 = int(np.clip(round((y1 - by1) / h * grid), 0, grid - 1))
        r1 = int(np.clip(round((y1 - by0) / h * grid), r0 + 1, grid))
        acc[r0:r1, c0:c1] += v
        cnt[r0:r1, c0:c1] += 1
        crop_scores.append(((bx0, by0, bx1, by1), float(v)))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
    return Heatmap(values, tuple(bounds), 0, crop_scores)  # type: ignore[arg-type]


def _fit(model, crops: np.ndarray) -> np.ndarray:
    """A batch of equal-size crops resized to the model's input size in one call."""
    import torch
    import torch.nn.functional as F

    size = model.image_size
    if crops.shape[1] == crops.shape[2] == size:
        return crops
    t = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.permute(0, 2, 3, 1).round().clamp(0, 255).byte().numpy()


def _downsample_mask(mask: np.ndarray, grid: int) -> np.ndarray:
    h, w = mask.shape
    rows = np.linspace(0, h, grid + 1).astype(int)
    cols = np.linspace(0, w, grid + 1).astype(int)
    out = np.zeros((grid, grid), bool)
    for i in range(grid):
        for j in range(grid):
            cell = mask[rows[i] : max(rows[i + 1], rows[i] + 1), cols[j] : max(cols[j + 1], cols[j] + 1)]
            out[i, j] = cell.size > 0 and cell.mean() >= 0.5
    return out


def heatmap_candidates(
    index: TileIndex,
    heat: Heatmap,
    *,
    threshold: float = 0.6,
    min_area_frac: float = 0.03,
    window_score: float | None = None,
    evidence: Sequence[str] = (),
) -> list[Candidate]:
    """Threshold a heatmap relative to its own score range and vectorise the components."""
    vals = heat.values
    finite = np.isfinite(vals)
    if not finite.any():
        return []
    lo, hi = float(np.nanmin(vals)), float(np.nanmax(vals))
    rel = (vals - lo) / (hi - lo) if hi - lo > 1e-6 else np.where(finite, 1.0, 0.0)
    binary = finite & (np.nan_to_num(rel, nan=0.0) >= threshold)
    if not binary.any():
        return []
    transform = heat.transform
    scale = window_scale_m(index, heat.bounds)
    cands: list[Candidate] = []
    total = binary.size
    comp_id = np.zeros(vals.shape, np.int32)
    geoms = []
    for n, (geom, _) in enumerate(
        shapes(binary.astype(np.uint8), mask=binary, connectivity=8, transform=transform), start=1
    ):
        poly = shape(geom)
        geoms.append((n, poly))
    for n, poly in geoms:
        from rasterio.features import rasterize

        comp = rasterize([(poly, 1)], out_shape=vals.shape, transform=transform, all_touched=False).astype(
            bool
        )
        comp &= binary
        if comp.sum() < max(1, min_area_frac * total):
            continue
        comp_id[comp] = n
        score = float(np.nanmean(vals[comp]))
        peak = float(np.nanmax(vals[comp]))
        bbox = tuple(float(v) for v in poly.bounds)
        frac = float(comp.sum() / total)
        cands.append(
            Candidate(
                polygon_map=poly,
                polygon_wgs84=to_wgs84(poly, index.crs),
                score=score,
                bbox_map=bbox,
                mask=comp,
                mask_bounds=heat.bounds,
                scale_m=scale * math.sqrt(max(frac, 1e-9)),
                window_score=window_score,
                evidence_tiles=list(evidence),
                features={"heat_mean": score, "heat_peak": peak, "area_frac": frac},
            )
        )
    cands.sort(key=lambda c: -c.score)
    return cands


class SegmentBackend:
    """Interface of region-proposal backends."""

    name = "base"

    def propose(
        self, index: TileIndex, bounds: Bounds, prompts: str | Sequence[str] | np.ndarray, **kwargs
    ) -> list[Candidate]:
        raise NotImplementedError


class HeatmapBackend(SegmentBackend):
    name = "heatmap"

    def __init__(
        self,
        crop_fracs: Sequence[float] = (1.0, 0.5, 1 / 3),
        overlap: float = 0.5,
        grid: int = 24,
        threshold: float = 0.6,
        min_area_frac: float = 0.03,
        read_px: int | None = None,
    ):
        self.crop_fracs, self.overlap, self.grid = tuple(crop_fracs), overlap, grid
        self.threshold, self.min_area_frac, self.read_px = threshold, min_area_frac, read_px

    def propose(
        self,
        index: TileIndex,
        bounds: Bounds,
        prompts: str | Sequence[str] | np.ndarray,
        *,
        window_score: float | None = None,
        evidence: Sequence[str] = (),
    ) -> list[Candidate]:
        heat = similarity_heatmap(
            index,
            bounds,
            prompts,
            crop_fracs=self.crop_fracs,
            overlap=self.overlap,
            grid=self.grid,
            read_px=self.read_px,
        )
        cands = heatmap_candidates(
            index,
            heat,
            threshold=self.threshold,
            min_area_frac=self.min_area_frac,
            window_score=window_score,
            evidence=evidence,
        )
        for c in cands:
            c.features["crops_embedded"] = heat.crops_embedded
        return cands


class StoredHeatmapBackend(SegmentBackend):
    """Heatmap from the index's stored tile embeddings (all scales) plus any extra scored windows
    (e.g. the pyramid's): free of reads and embeddings, resolution = the smallest stored scale."""

    name = "stored"

    def __init__(
        self,
        grid: int = 24,
        threshold: float = 0.6,
        min_area_frac: float = 0.03,
        max_frac: float = 0.6,
        windows: Sequence = (),
    ):
        self.grid, self.threshold, self.min_area_frac, self.max_frac = (
            grid,
            threshold,
            min_area_frac,
            max_frac,
        )
        self.windows = list(windows)

    def propose(
        self,
        index: TileIndex,
        bounds: Bounds,
        prompts: str | Sequence[str] | np.ndarray,
        *,
        window_score: float | None = None,
        evidence: Sequence[str] = (),
    ) -> list[Candidate]:
        vec = query_vector(index, prompts)
        boxes = [index.bounds]
        scores = [index.embeddings @ vec]
        if self.windows:
            boxes.append(np.array([w.bounds for w in self.windows], float))
            scores.append(np.array([w.score for w in self.windows], float))
        heat = heatmap_from_windows(
            bounds, np.concatenate(boxes), np.concatenate(scores), grid=self.grid, max_frac=self.max_frac
        )
        return heatmap_candidates(
            index,
            heat,
            threshold=self.threshold,
            min_area_frac=self.min_area_frac,
            window_score=window_score,
            evidence=evidence,
        )


def get_backend(name: str | SegmentBackend = "heatmap", **kwargs) -> SegmentBackend:
    if isinstance(name, SegmentBackend):
        return name
    if name == "heatmap":
        return HeatmapBackend(**kwargs)
    if name == "stored":
        return StoredHeatmapBackend(**kwargs)
    from geosearch.errors import InputError

    raise InputError(f"unknown segmentation backend {name!r}; known: heatmap, stored")


def segment(
    index: TileIndex,
    bounds: Bounds | str,
    prompts: str | Sequence[str] | np.ndarray,
    *,
    backend: str | SegmentBackend = "heatmap",
    **kwargs,
) -> list[Candidate]:
    """Region proposals inside ``bounds`` (mosaic CRS) or inside the tile ``bounds`` names, best first."""
    evidence: list[str] = []
    window_score = None
    if isinstance(bounds, str):
        i = index.position(bounds)
        evidence = [bounds]
        bounds = tuple(float(v) for v in index.bounds[i])  # type: ignore[assignment]
    be = get_backend(backend, **kwargs)
    return be.propose(index, bounds, prompts, window_score=window_score, evidence=evidence)  # type: ignore[arg-type]


def bbox_polygon(c: Candidate):
    return box(*c.bbox_map)


__all__ = [
    "Candidate",
    "Heatmap",
    "HeatmapBackend",
    "SegmentBackend",
    "StoredHeatmapBackend",
    "bbox_polygon",
    "heatmap_from_windows",
    "heatmap_candidates",
    "segment",
    "similarity_heatmap",
]
