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

**Backends.** The steps above are the default backend, ``superpixels``. ``sam`` replaces steps 1-2
with a Segment Anything model (any SAM-family checkpoint in Hugging Face format on local disk:
SAM, SlimSAM...): automatic mask generation over each block from a regular grid of point prompts,
each mask kept with a predicted IoU and a stability score above their thresholds is a proposal
(outline = the mask, vectorised), then the same size / aspect filters and box-NMS dedup.
``sam+superpixels`` keeps both (SAM masks ranked first). SAM needs its weights
(``GEOSEARCH_SAM_WEIGHTS``); without them the backend is refused before any work.

The index then embeds every proposal at its own extent, in the framing the reranker and the
calibration use (:func:`geosearch.refine.rerank.square_around`), so a query scores every proposal
of the whole mosaic with one matrix product and no read (:mod:`geosearch.refine.proposed`).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from rasterio.features import shapes
from rasterio.transform import Affine
from shapely.geometry import box, shape

from geosearch.errors import InputError
from geosearch.geo import Bounds, crs_units_per_metre, nms_boxes
from geosearch.mosaic import Mosaic

COLOUR_BINS = 25
LBP_BINS = 10  # uniform LBP, P=8: values 0..9
BACKENDS = ("superpixels", "sam", "sam+superpixels")
SAM_LEVEL = -1  # ``Proposal.level`` of a SAM mask (not from the hierarchical grouping)


@dataclass
class ProposalSettings:
    """What the proposal step looks for (recorded in the index meta, see :meth:`as_dict`)."""

    min_side_m: float = 48.0
    max_side_m: float = 1200.0
    max_aspect: float = 4.0
    block_px: int = 1024  # working-resolution block side (blocks overlap by ``max_side_m``)
    px_per_min_side: float = 8.0  # the smallest proposal spans this many working pixels
    fz_scales: tuple[float, ...] = (100.0, 300.0, 800.0)  # Felzenszwalb ``scale`` per diversification
    fz_sigma: float = 0.8
    dedup_iou: float = 0.85
    max_per_km2: float = 400.0  # cap, best-grouped first (never more than this many per km²)
    backend: str = "superpixels"  # one of BACKENDS
    # SAM backend (recorded only when it is used)
    sam_points: int = 16  # point prompts per block side (a sam_points x sam_points grid)
    sam_min_iou: float = 0.88  # masks with a lower predicted IoU are dropped (SAM's default)
    sam_min_stability: float = 0.95  # ... and with a lower stability score (SAM's default)
    # how, not what: left out of the record (the checkpoint is recorded by its content instead)
    sam_weights: str | Path | None = None
    device: str = "auto"
    sam_batch: int = 64  # point prompts decoded at once

    RUNTIME = ("sam_weights", "device", "sam_batch")
    SAM_ONLY = ("sam_points", "sam_min_iou", "sam_min_stability")

    @classmethod
    def from_settings(cls, settings) -> ProposalSettings:
        """The proposal settings a :class:`geosearch.settings.Settings` asks for."""
        return cls(
            backend=settings.proposal_backend,
            sam_weights=settings.sam_weights,
            device=settings.device,
            sam_points=settings.sam_points_per_side,
            sam_min_iou=settings.sam_min_iou,
            sam_min_stability=settings.sam_min_stability,
        )

    @property
    def uses_sam(self) -> bool:
        return self.backend in ("sam", "sam+superpixels")

    def as_dict(self) -> dict:
        """What decides the proposals: the index redoes them when this changes. The SAM weights
        are recorded by a digest of the checkpoint's files, not by their path: the same weights
        moved or on another machine give the same proposals (nothing is redone), and other
        weights put at the same path do not (they are redone)."""
        skip = set(self.RUNTIME) | (set() if self.uses_sam else set(self.SAM_ONLY))
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if k not in skip}
        if self.uses_sam:
            out["sam_checkpoint"] = checkpoint_digest(Path(self.sam_weights)) if self.sam_weights else None
        return out

    def matches(self, recorded: dict | None) -> bool:
        """Whether proposals recorded with ``recorded`` settings are the ones these would find (a
        record from before backends existed is the superpixel backend)."""
        return recorded is None or {"backend": "superpixels", **recorded} == self.as_dict()


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


# --- backends: each turns one block into candidates ------------------------------------------
# A candidate is (bounds in the mosaic CRS, rank, make): candidates of the whole mosaic are sorted by
# rank (lowest first), deduplicated by box NMS in that order, and ``make()`` builds each one kept.


@dataclass
class _Block:
    """One working-resolution block: its pixels, where it lies, and which boxes it keeps."""

    img: np.ndarray  # (h, w, 3) uint8
    valid: np.ndarray  # (h, w) bool
    tr: Affine  # block pixel -> mosaic CRS
    by: int  # block origin in working pixels
    bx: int
    height_px: int  # the whole mosaic in working pixels
    width_px: int
    min_px: float
    max_px: float
    max_aspect: float

    def keeps(self, r0, c0, r1, c1) -> bool:
        """Size and aspect filters; and a box cut by the block edge belongs to the neighbouring
        block."""
        hh, ww = r1 - r0, c1 - c0
        if min(hh, ww) < self.min_px or max(hh, ww) > self.max_px:
            return False
        if max(hh, ww) / max(min(hh, ww), 1e-9) > self.max_aspect:
            return False
        h, w = self.valid.shape
        if (r0 <= 0 < self.by) or (c0 <= 0 < self.bx) or (r1 >= h and self.by + h < self.height_px):
            return False
        return not (c1 >= w and self.bx + w < self.width_px)

    def bounds(self, r0, c0, r1, c1) -> Bounds:
        x0r, y1r = self.tr @ (c0, r0)
        x1r, y0r = self.tr @ (c1, r1)
        return (float(x0r), float(y0r), float(x1r), float(y1r))


def _superpixel_candidates(blk: _Block, ps: ProposalSettings) -> list[tuple]:
    """Felzenszwalb superpixels at each scale, and every region of their hierarchical grouping;
    larger groupings rank first (of two near-duplicates, the one built from more superpixels stays)."""
    from skimage.segmentation import felzenszwalb

    out = []
    for scale in ps.fz_scales:
        labels = felzenszwalb(
            blk.img, scale=scale, sigma=ps.fz_sigma, min_size=max(4, int(blk.min_px * blk.min_px / 8))
        )
        for reg in hierarchical_grouping(blk.img, labels, blk.valid, blk.max_px):
            if not blk.keeps(*reg["bbox"]):
                continue
            b = blk.bounds(*reg["bbox"])
            out.append(
                (b, (1, -len(reg["members"])), functools.partial(_to_proposal, b, reg, labels, blk.tr))
            )
    return out


SAM_HINT = (
    "set GEOSEARCH_SAM_WEIGHTS to a local folder holding a SAM-family checkpoint in Hugging Face "
    "format (e.g. SlimSAM or sam-vit-base), or use the default superpixel proposals"
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _checkpoint_files(path: Path) -> list[Path]:
    return sorted(f for f in path.iterdir() if f.is_file() and f.suffix in (".json", *_WEIGHT_SUFFIXES))


def sam_checkpoint_dir(weights: str | Path | None) -> Path:
    """The folder of a SAM-family checkpoint in Hugging Face format (``config.json`` with
    ``model_type`` "sam" and its weights), or an :class:`InputError` saying how to provide one."""
    if not weights:
        raise InputError(f"SAM weights not found (GEOSEARCH_SAM_WEIGHTS is not set): {SAM_HINT}")
    path = Path(weights).expanduser()
    files = _checkpoint_files(path) if path.is_dir() else []
    if not (path / "config.json").is_file() or not any(f.suffix in _WEIGHT_SUFFIXES for f in files):
        raise InputError(f"SAM weights not found at {path}: {SAM_HINT}")
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type != "sam":
        raise InputError(f"no SAM checkpoint at {path} (config.json model_type {model_type!r}): {SAM_HINT}")
    return path


def check_backend(ps: ProposalSettings) -> None:
    """Refuse, in one line and before any work, a backend that is unknown or cannot run here."""
    if ps.backend not in BACKENDS:
        raise InputError(f"unknown proposal backend {ps.backend!r}: one of {', '.join(BACKENDS)}")
    if ps.uses_sam:
        sam_checkpoint_dir(ps.sam_weights)


def available_backends(weights: str | Path | None) -> list[str]:
    """The backends offered with these SAM weights (SAM only when its checkpoint is on disk)."""
    try:
        sam_checkpoint_dir(weights)
    except InputError:
        return ["superpixels"]
    return list(BACKENDS)


_DIGESTS: dict = {}


def checkpoint_digest(weights: str | Path) -> str:
    """A digest of the checkpoint's files (configs and weights), computed once per file state."""
    path = sam_checkpoint_dir(weights)
    files = _checkpoint_files(path)
    key = (str(path.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        _DIGESTS[key] = "sha256:" + h.hexdigest()[:16]
    return _DIGESTS[key]


def _load_sam(ps: ProposalSettings) -> tuple:
    """(model, processor, device) from the local checkpoint; never the network."""
    path = sam_checkpoint_dir(ps.sam_weights)
    try:
        import torch  # noqa: F401
        from transformers import SamImageProcessor, SamModel, SamProcessor
    except ImportError as exc:
        msg = f"the SAM proposals need transformers ({exc}); or use the default superpixel proposals"
        raise InputError(msg) from exc
    from geosearch.models.base import resolve_device

    device = resolve_device(ps.device)
    try:
        model = SamModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        try:
            processor = SamProcessor.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, TypeError):  # weights saved without their processor: SAM's
            side = model.config.vision_config.image_size
            processor = SamProcessor(
                SamImageProcessor(size={"longest_edge": side}, pad_size={"height": side, "width": side})
            )
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"could not load the SAM checkpoint at {path}: {first}") from exc
    return model, processor, device


def _sam_candidates(blk: _Block, ps: ProposalSettings, sam: tuple) -> list[tuple]:
    """SAM's automatic mask generation over the block: a grid of point prompts (on valid pixels),
    three masks per point, kept where the predicted IoU and the stability score (share of the
    mask that stays when its logit threshold moves by ±1, on the low-resolution logits) reach
    their thresholds; the filters of every backend, box NMS within the block, then each mask's
    outline. Ranked by predicted IoU, ahead of any superpixel proposal."""
    import torch

    model, processor, device = sam
    h, w = blk.valid.shape
    n = max(1, int(ps.sam_points))
    ys, xs = (np.arange(n) + 0.5) * h / n, (np.arange(n) + 0.5) * w / n
    points = [(x, y) for y in ys for x in xs if blk.valid[int(y), int(x)]]
    if not points:
        return []
    inputs = processor(images=blk.img, input_data_format="channels_last", return_tensors="pt")
    rh, rw = (int(v) for v in inputs["reshaped_input_sizes"][0])
    pad = processor.image_processor.pad_size
    dtype = model.dtype
    logits_kept, scores_kept = [], []
    with torch.inference_mode():
        emb = model.get_image_embeddings(inputs["pixel_values"].to(device, dtype))
        coords = torch.tensor(points, dtype=torch.float32) * torch.tensor([rw / w, rh / h])
        for s in range(0, len(coords), max(1, ps.sam_batch)):
            c = coords[s : s + max(1, ps.sam_batch)]
            out = model(
                image_embeddings=emb,
                input_points=c[None, :, None, :].to(device, dtype),
                input_labels=torch.ones((1, len(c), 1), dtype=torch.long, device=device),
                multimask_output=True,
            )
            logits = out.pred_masks[0].flatten(0, 1).float()  # (points x 3, L, L)
            iou = out.iou_scores[0].flatten().float()
            side = logits.shape[-1]
            part = logits[:, : math.ceil(rh * side / pad["height"]), : math.ceil(rw * side / pad["width"])]
            stable = (part > 1.0).sum((1, 2)) / (part > -1.0).sum((1, 2)).clamp(min=1)
            ok = (iou >= ps.sam_min_iou) & (stable >= ps.sam_min_stability)
            logits_kept.append(logits[ok])
            scores_kept.append(iou[ok])
        logits = torch.cat(logits_kept)
        scores = torch.cat(scores_kept).cpu().numpy().astype(float)
        masks = []
        for s in range(0, len(logits), 16):  # upsampled to the block a few at a time
            up = processor.image_processor.post_process_masks(
                [logits[s : s + 16, None]], [(h, w)], [(rh, rw)], pad_size=pad
            )[0]
            masks += list(up[:, 0].cpu().numpy())
    cands = []
    for m, score in zip(masks, scores):
        m = m & blk.valid
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if not len(rows):
            continue
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        if blk.keeps(r0, c0, r1, c1):
            cands.append((blk.bounds(r0, c0, r1, c1), float(score), m[r0:r1, c0:c1], (r0, c0)))
    if not cands:
        return []
    cands.sort(key=lambda c: -c[1])
    keep = nms_boxes(np.array([c[0] for c in cands], float), len(cands), ps.dedup_iou)
    out = []
    for i in keep:
        b, score, sub, (r0, c0) = cands[i]
        poly = _outline(sub, blk.tr @ Affine.translation(c0, r0), b, abs(blk.tr.a))
        extra = {"source": "sam", "score": score}
        out.append((b, (0, -score), functools.partial(Proposal, b, poly, SAM_LEVEL, 1, extra)))
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


def propose_mosaic(
    mosaic: Mosaic, ps: ProposalSettings | None = None, cancel: threading.Event | None = None
) -> list[Proposal]:
    """Every proposal of the mosaic (mosaic CRS), deduplicated, best first. The backend
    (``ps.backend``) turns each block into candidates; a backend that cannot run here (SAM
    without its weights) is refused with an :class:`InputError` before anything is read.
    ``cancel``: when set (a failed build), it stops before the next block and returns nothing."""
    ps = ps or ProposalSettings()
    check_backend(ps)
    sam = _load_sam(ps) if ps.uses_sam else None
    gsd = working_gsd(mosaic, ps)
    mb = mosaic.bounds
    unit_x, unit_y = crs_units_per_metre(mb, mosaic.size_px, mosaic.pixel_size_m)
    width_px = max(1, int(round((mb[2] - mb[0]) / (gsd * unit_x))))
    height_px = max(1, int(round((mb[3] - mb[1]) / (gsd * unit_y))))
    overlap = min(ps.block_px // 2, int(math.ceil(ps.max_side_m / gsd)))
    px_x = (mb[2] - mb[0]) / width_px
    px_y = (mb[3] - mb[1]) / height_px
    min_px, max_px = ps.min_side_m / gsd, ps.max_side_m / gsd
    found: list[tuple] = []
    for by in _blocks(height_px, ps.block_px, overlap):
        for bx in _blocks(width_px, ps.block_px, overlap):
            if cancel is not None and cancel.is_set():
                return []
            w = min(ps.block_px, width_px - bx)
            h = min(ps.block_px, height_px - by)
            x0 = mb[0] + bx * px_x
            y1 = mb[3] - by * px_y
            bounds = (x0, y1 - h * px_y, x0 + w * px_x, y1)
            data = mosaic.read(bounds, (h, w))
            valid = data.mask if data.mask is not None else np.ones((h, w), bool)
            if valid.mean() < 0.01:
                continue
            tr = Affine(px_x, 0, x0, 0, -px_y, y1)
            blk = _Block(data.rgb, valid, tr, by, bx, height_px, width_px, min_px, max_px, ps.max_aspect)
            if sam is not None:
                found += _sam_candidates(blk, ps, sam)
            if ps.backend != "sam":
                found += _superpixel_candidates(blk, ps)
    if not found:
        return []
    area_km2 = (mb[2] - mb[0]) / unit_x * (mb[3] - mb[1]) / unit_y / 1e6
    cap = max(50, int(ps.max_per_km2 * area_km2))
    order = sorted(range(len(found)), key=lambda i: found[i][1])
    boxes = np.array([found[i][0] for i in order], float)
    keep = nms_boxes(boxes, cap, ps.dedup_iou)
    return [found[order[i]][2]() for i in keep]


def _outline(sub: np.ndarray, sub_tr: Affine, bounds: Bounds, tol: float):
    """The outline of the True pixels of ``sub`` (placed by ``sub_tr``), vectorised and
    simplified; the box where that gives nothing valid."""
    polys = [shape(g) for g, v in shapes(sub.astype(np.uint8), mask=sub, transform=sub_tr) if v == 1]
    if polys:
        poly = shapely.union_all(polys).simplify(tol, preserve_topology=True)
        if poly.is_empty or not poly.is_valid:
            poly = box(*bounds)
    else:
        poly = box(*bounds)
    return poly


def _to_proposal(bounds: Bounds, reg: dict, labels: np.ndarray, tr: Affine) -> Proposal:
    """The proposal's outline: the union of its superpixels, vectorised and simplified."""
    r0, c0, r1, c1 = (int(v) for v in reg["bbox"])
    sub = np.isin(labels[r0:r1, c0:c1], list(reg["members"]))
    poly = _outline(sub, tr @ Affine.translation(c0, r0), bounds, abs(tr.a))
    return Proposal(bounds, poly, int(reg["level"]), len(reg["members"]))
