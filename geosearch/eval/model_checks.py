"""Model checks on the inputs the index really embeds, not on whole centred frames.

* :func:`pointing`: one chip per AID class on a 6x5 grid at 1.7 m pixels, indexed like any mosaic;
  for each class, does the top-1 tile of ``search("an aerial image of a <class>")`` have its centre
  in a chip of that class? (``geosearch models pointing``)
* :func:`tile_classification`: on a benchmark mosaic and its index, every tile at the given
  scales that one class covers for at least half its area is zero-shot classified from its stored
  embedding over all 30 AID classes (class-prompt means, as in training; over the bench's own
  labels when they are not AID classes). (``geosearch models tiles BENCH``)

The pointing grid may be built from the **test** split once, for the model card: that split is
evaluation only, and nothing here trains, tunes or chooses anything.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from geosearch.errors import InputError
from geosearch.train.data import load_source

POINTING_SPLITS = ("dev", "test")
POINTING_TEMPLATE = "an aerial image of a {c}"


def pointing(
    model=None,
    *,
    split: str = "dev",
    data_dir: str | Path | None = None,
    gsd_m: float = 1.7,
    cols: int = 6,
    seed: int = 0,
    work_dir: str | Path | None = None,
    settings=None,
) -> dict:
    """The pointing check; returns ``{"pointing": share, "classes": n, "per_class": {...}}``."""
    from geosearch.eval.aid_bench import CHIP_PX, DEFAULT_DATA, ORIGIN, Chip, _write_mosaic, class_phrase
    from geosearch.index import TileIndex, build_index
    from geosearch.models import get_model
    from geosearch.search import search
    from geosearch.settings import get_settings

    if split not in POINTING_SPLITS:
        raise InputError(f"pointing uses the dev or test split, not {split!r}")
    data_dir = Path(data_dir) if data_dir else DEFAULT_DATA
    manifest = data_dir / "manifest.jsonl"
    if not manifest.is_file():
        raise InputError(f"AID/RSICD manifest not found: {manifest}")
    records = sorted(load_source(manifest, split).records, key=lambda r: r.path)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list] = {}
    for r in records:
        by_class.setdefault(r.label, []).append(r)
    chips = []
    for i, cls in enumerate(sorted(by_class)):
        r = by_class[cls][int(rng.integers(len(by_class[cls])))]
        col, row = (i % cols) * CHIP_PX, (i // cols) * CHIP_PX
        chips.append(Chip(str(r.path), cls, [], split, 1.0, CHIP_PX, col, row))
    n_rows = -(-len(chips) // cols)
    width, height = cols * CHIP_PX, n_rows * CHIP_PX

    settings = (settings or get_settings()).model_copy(update={"proposals": False})
    emb_model = (
        model if model is not None and not isinstance(model, str) else get_model(model, settings=settings)
    )
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tif = Path(tmp) / f"pointing_{split}.tif"
        _write_mosaic(chips, data_dir, tif, width, height, gsd_m=gsd_m)
        build_index([tif], Path(tmp) / "index.duckdb", model=emb_model, settings=settings, progress=False)
        index = TileIndex.open(Path(tmp) / "index.duckdb")
        per_class = {}
        for chip in chips:
            text = POINTING_TEMPLATE.format(c=class_phrase(chip.cls))
            hit = search(index, text, 1, context=settings.search_context)[0]
            x0, y0, x1, y1 = hit.bounds
            col = int(((x0 + x1) / 2 - ORIGIN[0]) / gsd_m // CHIP_PX)
            row = int((ORIGIN[1] - (y0 + y1) / 2) / gsd_m // CHIP_PX)
            k = row * cols + col
            found = chips[k].cls if 0 <= col < cols and 0 <= k < len(chips) else None
            per_class[chip.cls] = {"hit_class": found, "ok": found == chip.cls, "scale_m": hit.scale_m}
    share = float(np.mean([v["ok"] for v in per_class.values()]))
    return {
        "check": "pointing",
        "model": emb_model.model_id,
        "split": split,
        "gsd_m": gsd_m,
        "grid": [cols, n_rows],
        "search_context": settings.search_context,
        "pointing": share,
        "classes": len(per_class),
        "per_class": per_class,
    }


def tile_classification(
    bench_dir: str | Path,
    index_path: str | Path | None = None,
    *,
    scales: tuple[float, ...] = (128.0, 256.0),
    min_share: float = 0.5,
    settings=None,
    progress: bool = False,
    model=None,
) -> dict:
    """Zero-shot accuracy of the index's own tile embeddings on tiles one class dominates.

    Without ``index_path`` the benchmark's index for the settings' model is built or reused, the
    one ``geosearch eval`` uses."""
    from shapely.geometry import box
    from shapely.strtree import STRtree

    from geosearch.eval.bench_format import load_benchmark
    from geosearch.geo import WGS84, reproject_geom
    from geosearch.index import TileIndex
    from geosearch.train.data import class_prompts

    bench = load_benchmark(bench_dir)
    if index_path is None:
        from geosearch.eval.harness import prepare_index
        from geosearch.settings import get_settings

        index, _ = prepare_index(bench, settings or get_settings(), None, progress)
    else:
        index = TileIndex.open(index_path)
    if model is not None:  # the index's own model otherwise (by its registry name)
        index.attach_model(model)
    regions = bench.regions
    labels = sorted({r.label for r in regions.values() if r.label})
    if not labels:
        raise InputError(f"benchmark {bench_dir} has no labelled regions")
    polys = [reproject_geom(r.polygon_wgs84, WGS84, index.crs) for r in regions.values()]
    owner = [r.label for r in regions.values()]
    tree = STRtree(polys)
    aid = _aid_classes()
    classes = aid if aid and set(labels) <= set(aid) else labels  # all 30 AID classes compete
    model = index.model()
    prompts = [class_prompts(c) for c in classes]
    flat = [p for ps in prompts for p in ps]
    emb = np.concatenate([model.encode_text(flat[i : i + 256]) for i in range(0, len(flat), 256)])
    emb = emb.reshape(len(classes), -1, emb.shape[-1]).mean(axis=1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    out: dict = {
        "check": "tiles",
        "model": index.meta.get("model_id"),
        "bench": str(bench_dir),
        "classes": len(classes),
        "min_share": min_share,
    }
    for scale in scales:
        pick = np.flatnonzero(np.isclose(index.scales, scale))
        truth, keep = [], []
        for i in pick:
            tile = box(*index.bounds[i])
            area: dict[str, float] = {}
            for j in tree.query(tile):
                area[owner[j]] = area.get(owner[j], 0.0) + tile.intersection(polys[j]).area
            if area:
                cls, a = max(area.items(), key=lambda kv: kv[1])
                if a >= min_share * tile.area and cls in classes:
                    truth.append(classes.index(cls))
                    keep.append(i)
        if not keep:
            out[f"acc@{scale:g}m"] = None
            out[f"n@{scale:g}m"] = 0
            continue
        pred = (index.embeddings[keep] @ emb.T).argmax(axis=1)
        out[f"acc@{scale:g}m"] = float((pred == np.array(truth)).mean())
        out[f"n@{scale:g}m"] = len(keep)
    return out


def _aid_classes() -> list[str]:
    """The 30 AID class names when the manifest is present (zero-shot over all of them), else []."""
    from geosearch.eval.aid_bench import DEFAULT_DATA

    manifest = DEFAULT_DATA / "manifest.jsonl"
    return load_source(manifest, None).classes if manifest.is_file() else []
