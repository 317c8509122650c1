"""The dev benchmark: AID/RSICD dev chips packed into one georeferenced mosaic.

``geosearch bench aid-mosaic --split dev OUT_DIR`` writes a FORMAT.md folder:

* ``mosaic/aid_dev.tif``: RGBA GeoTIFF (tiled, deflate, overviews; alpha = 0 between chips) in
  EPSG:32633 (a made-up place, zone 33N). Chips (150x150 px JPEGs) are upsampled by a random
  factor in [1, 2] (seeded, per chip) and shelf-packed edge to edge at a nominal 1.5 m/px, so a
  chip covers 225 m (1x) to 450 m (2x) on the ground, in the range of real AID footprints
  (AID frames are 600 px at 0.5-8 m).
* ``regions.geojson``: one region per chip (its footprint, EPSG:4326), label = AID class.
* ``queries.jsonl``: one RSICD caption per sampled chip (grade 2 for that chip, grade 1 for every
  other chip of its class), "an aerial image of a {class}" per class (grade 1 for all its chips),
  type ``scene``; classes left out of the mosaic give ``absent`` queries (captions of their dev
  chips and their class-name query, ``relevant`` empty).

Only ``split == "dev"`` rows are ever read: the test split is reserved for final evaluation.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from shapely.geometry import box, mapping

from geosearch.errors import InputError
from geosearch.fileio import atomic_path, atomic_write_text
from geosearch.geo import WGS84, reproject_geom

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "aid-rsicd"
CRS = "EPSG:32633"
ORIGIN = (400_000.0, 5_000_000.0)  # top-left corner (UTM 33N, made up)
GSD_M = 1.5
CHIP_PX = 150
DEFAULT_LEAVE_OUT = ("Airport", "Port", "BaseballField")
ALLOWED_SPLITS = ("dev",)


@dataclass
class Chip:
    path: str
    cls: str
    captions: list[str]
    split: str = ""
    factor: float = 1.0
    size: int = CHIP_PX
    col: int = 0
    row: int = 0
    region_id: str = ""


def normalise_caption(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def _near_duplicate(norm: str, seen: list[set[str]], threshold: float = 0.85) -> bool:
    toks = set(norm.split())
    for other in seen:
        union = toks | other
        if union and len(toks & other) / len(union) >= threshold:
            return True
    return False


def class_phrase(cls: str) -> str:
    """``DenseResidential`` -> ``dense residential``; ``StorageTanks`` -> ``storage tanks``."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", cls).lower()


def read_manifest(data_dir: Path, split: str) -> list[Chip]:
    if split not in ALLOWED_SPLITS:
        raise InputError(
            f"split {split!r} is not allowed for a benchmark mosaic: only 'dev' "
            "(the test split is for final evaluation only)"
        )
    manifest = data_dir / "manifest.jsonl"
    if not manifest.is_file():
        raise InputError(f"AID/RSICD manifest not found: {manifest}")
    chips = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("split") != split:
            continue
        chips.append(Chip(row["path"], row["class"], list(row.get("captions") or []), row["split"]))
    assert all(c.split == split for c in chips)
    if not chips:
        raise InputError(f"no {split!r} rows in {manifest}")
    return sorted(chips, key=lambda c: c.path)


def shelf_pack(chips: list[Chip], width_px: int) -> tuple[int, int]:
    """Tallest first, left to right on shelves; returns the (width, height) of the packing."""
    x = y = shelf_h = used_w = 0
    for c in sorted(chips, key=lambda c: (-c.size, c.path)):
        if x > 0 and x + c.size > width_px:
            y += shelf_h
            x = shelf_h = 0
        c.col, c.row = x, y
        x += c.size
        shelf_h = max(shelf_h, c.size)
        used_w = max(used_w, x)
    return used_w, y + shelf_h


def _write_mosaic(chips: list[Chip], data_dir: Path, path: Path, width: int, height: int) -> None:
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.transform import from_origin

    img = np.zeros((4, height, width), np.uint8)
    for c in chips:
        with Image.open(data_dir / c.path) as im:
            arr = np.asarray(im.convert("RGB").resize((c.size, c.size), Image.BICUBIC))
        img[:3, c.row : c.row + c.size, c.col : c.col + c.size] = arr.transpose(2, 0, 1)
        img[3, c.row : c.row + c.size, c.col : c.col + c.size] = 255
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 4,
        "dtype": "uint8",
        "crs": CRS,
        "transform": from_origin(ORIGIN[0], ORIGIN[1], GSD_M, GSD_M),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
        "photometric": "RGB",
        "BIGTIFF": "IF_SAFER",
    }
    with atomic_path(path, suffix=".tif") as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(img)
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
            levels = [f for f in (2, 4, 8, 16, 32) if max(width, height) / f >= 256]
            if levels:
                dst.build_overviews(levels, Resampling.average)
                dst.update_tags(ns="rio_overview", resampling="average")


def build_aid_bench(
    out_dir: str | Path,
    *,
    split: str = "dev",
    data_dir: str | Path | None = None,
    n_chips: int | None = 300,
    grid: int | None = None,
    seed: int = 0,
    leave_out: list[str] | tuple[str, ...] | None = None,
    max_queries: int = 150,
    absent_captions_per_class: int = 5,
) -> dict:
    """Write the benchmark folder; returns a summary (chips, queries, mosaic size)."""
    data_dir = Path(data_dir) if data_dir else DEFAULT_DATA
    chips_all = read_manifest(data_dir, split)
    assert split == "dev" and all(c.split == "dev" for c in chips_all), "benchmark mosaics use dev chips only"
    classes = sorted({c.cls for c in chips_all})
    left = list(DEFAULT_LEAVE_OUT if leave_out is None else leave_out)
    unknown = [c for c in left if c not in classes]
    if unknown:
        raise InputError(f"unknown class(es) to leave out: {unknown}; classes: {', '.join(classes)}")
    rng = np.random.default_rng(seed)
    present = [c for c in chips_all if c.cls not in left]
    if n_chips is not None and n_chips < len(present):
        if n_chips < 1:
            raise InputError("--chips must be at least 1")
        pick = sorted(rng.choice(len(present), size=n_chips, replace=False).tolist())
        present = [present[i] for i in pick]
    for i, c in enumerate(present):
        c.factor = float(rng.uniform(1.0, 2.0))
        c.size = int(round(CHIP_PX * c.factor))
        c.region_id = f"r{i:04d}"
    mean_size = float(np.mean([c.size for c in present]))
    per_row = grid if grid else max(1, int(round(math.sqrt(len(present)))))
    width, height = shelf_pack(present, int(round(per_row * mean_size)))

    out = Path(out_dir)
    (out / "mosaic").mkdir(parents=True, exist_ok=True)
    _write_mosaic(present, data_dir, out / "mosaic" / "aid_dev.tif", width, height)

    feats = []
    for c in present:
        x0 = ORIGIN[0] + c.col * GSD_M
        y1 = ORIGIN[1] - c.row * GSD_M
        poly = box(x0, y1 - c.size * GSD_M, x0 + c.size * GSD_M, y1)
        feats.append(
            {
                "type": "Feature",
                "geometry": mapping(reproject_geom(poly, CRS, WGS84)),
                "properties": {
                    "id": c.region_id,
                    "label": c.cls,
                    "source": c.path,
                    "upsample": round(c.factor, 3),
                    "width_m": round(c.size * GSD_M, 1),
                },
            }
        )
    by_class: dict[str, list[Chip]] = {}
    for c in present:
        by_class.setdefault(c.cls, []).append(c)

    queries: list[dict] = []
    seen: list[set[str]] = []

    def add(text: str, qtype: str, relevant: dict[str, int]) -> bool:
        norm = normalise_caption(text)
        if len(queries) >= max_queries or not norm or _near_duplicate(norm, seen):
            return False
        seen.append(set(norm.split()))
        queries.append(
            {
                "id": f"q{len(queries):04d}",
                "text": text.strip().rstrip(" .").strip(),
                "type": qtype,
                "relevant": relevant,
            }
        )
        return True

    # class-name queries (present classes -> scene, left-out classes -> absent)
    for cls in sorted(by_class):
        add(f"an aerial image of a {class_phrase(cls)}", "scene", {c.region_id: 1 for c in by_class[cls]})
    for cls in left:
        add(f"an aerial image of a {class_phrase(cls)}", "absent", {})
    # absent captions: dev chips of the left-out classes (never in the mosaic)
    for cls in left:
        pool = [c for c in chips_all if c.cls == cls]
        n = 0
        for i in rng.permutation(len(pool)):
            if n >= absent_captions_per_class:
                break
            caps = pool[int(i)].captions
            if caps and add(caps[int(rng.integers(len(caps)))], "absent", {}):
                n += 1
    # one caption per sampled chip until the cap
    for i in rng.permutation(len(present)):
        if len(queries) >= max_queries:
            break
        c = present[int(i)]
        if not c.captions:
            continue
        rel = {o.region_id: 1 for o in by_class[c.cls]}
        rel[c.region_id] = 2
        for j in rng.permutation(len(c.captions)):
            if add(c.captions[int(j)], "scene", rel):
                break

    desc = (
        f"AID/RSICD {split} split: {len(present)} chips of {len(by_class)} classes, each 150 px JPEG "
        f"upsampled x1-x2 (seeded) and shelf-packed edge to edge into one RGBA GeoTIFF at a nominal "
        f"{GSD_M} m/px in {CRS} (a made-up place), so one chip covers {CHIP_PX * GSD_M:g}-"
        f"{2 * CHIP_PX * GSD_M:g} m, like real AID frames (600 px at 0.5-8 m). Truth regions are chip "
        f"footprints; caption queries grade the captioned chip 2 and other chips of its class 1. "
        f"Classes left out of the mosaic ({', '.join(left)}) give 'absent' queries. seed={seed}."
    )
    bench = {
        "name": f"aid-{split}",
        "description": desc,
        "iou": 0.5,
        "k": [1, 5, 10],
        "source": "/work/shared/data/aid-rsicd (split dev only)",
        "seed": seed,
        "gsd_m": GSD_M,
        "crs": CRS,
        "left_out_classes": left,
        "n_chips": len(present),
    }
    atomic_write_text(out / "regions.geojson", json.dumps({"type": "FeatureCollection", "features": feats}))
    atomic_write_text(out / "queries.jsonl", "".join(json.dumps(q) + "\n" for q in queries))
    atomic_write_text(out / "bench.json", json.dumps(bench, indent=2) + "\n")
    types: dict[str, int] = {}
    for q in queries:
        types[q["type"]] = types.get(q["type"], 0) + 1
    return {
        "out": str(out),
        "chips": len(present),
        "classes": len(by_class),
        "left_out": left,
        "queries": len(queries),
        "query_types": types,
        "mosaic_px": [width, height],
        "mosaic_km": [round(width * GSD_M / 1000, 2), round(height * GSD_M / 1000, 2)],
    }
