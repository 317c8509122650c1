#!/usr/bin/env python
"""Assemble the NAIP change benchmark folder: ``scripts/make_naip_change_bench.py OUT_DIR``.

Copies ``bench.json``, ``queries.jsonl`` and ``regions.geojson`` from ``benchmarks/naip-change/``
into OUT_DIR and fills ``OUT_DIR/mosaic/`` with symlinks (``--copy``: copies) to the NAIP files of
``../shared/data/naip-timeseries`` named in bench.json's ``dates`` (file stem -> date). The data
are never committed to the repository. ``--all-dates`` links all ten dates (and lists them in the
written bench.json); ``--iou X`` overrides the IoU threshold in the written bench.json.

``--write-truth`` (maintainers only) regenerates ``regions.geojson`` in the repository from the
hand-marked boxes below (metres east / south of the NAIP tile's north-west corner, EPSG:26914).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "naip-change"
DATA = REPO.parent / "shared" / "data" / "naip-timeseries"
ORIGIN = (485900.0, 5209245.0)  # north-west corner of the 2012-2015 NAIP grids (EPSG:26914)

# Hand-marked from side-by-side renders (2009 vs 2020, 2019 vs 2020; see docs/change.md):
# id: (label, x0, x1, y0, y1) in metres east (x) and south (y) of ORIGIN.
BOXES = {
    "r01": ("new water: lake spread over fields (north-west)", 0, 550, 600, 1250),
    "r02": ("new water: lake spread over fields (west)", 300, 850, 1650, 2200),
    "r04": ("new water: lakes merged over pasture (north-east)", 3050, 3850, 450, 1350),
    "r06": ("new water: lake spread over fields (south-east)", 3100, 3950, 2450, 3000),
    "r07": ("new water: lake grew (south-west)", 650, 1300, 2550, 3300),
    "r08": ("bare field in 2020 (vegetated 2009, 2019)", 4000, 4670, 2500, 3050),
    "r09": ("bare field in 2020 (vegetated 2009, 2019)", 400, 800, 280, 700),
    "r10": ("bare field in 2020 (vegetated 2009, 2019)", 2400, 2800, 3000, 3600),
    "r11": ("bare field in 2020 (vegetated 2019, bare 2009)", 3150, 3800, 2050, 2500),
    "r12": ("bare field in 2020 (vegetated 2009, 2019)", 4200, 4670, 1500, 1800),
    "r13": ("bare field in 2020 (partly vegetated 2019)", 1950, 2450, 3050, 3350),
    "g01": ("field bare in 2019, vegetated in 2020", 4340, 4670, 1140, 1500),
    "g02": ("field partly bare in 2019, vegetated in 2020", 900, 1500, 3150, 3500),
}


def write_truth() -> None:
    import numpy as np
    import shapely
    from pyproj import Transformer
    from shapely.geometry import box, mapping

    t = Transformer.from_crs("EPSG:26914", "EPSG:4326", always_xy=True)
    feats = []
    for rid, (label, x0, x1, y0, y1) in BOXES.items():
        g = box(ORIGIN[0] + x0, ORIGIN[1] - y1, ORIGIN[0] + x1, ORIGIN[1] - y0).segmentize(50)
        g84 = shapely.transform(g, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
        feats.append(
            {
                "type": "Feature",
                "geometry": mapping(g84),
                "properties": {
                    "id": rid,
                    "label": label,
                    "box_epsg26914": [ORIGIN[0] + x0, ORIGIN[1] - y1, ORIGIN[0] + x1, ORIGIN[1] - y0],
                },
            }
        )
    text = json.dumps({"type": "FeatureCollection", "features": feats}, indent=1)
    (BENCH / "regions.geojson").write_text(text + "\n")
    print(f"wrote {BENCH / 'regions.geojson'} ({len(feats)} regions)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--data", default=str(DATA), help="folder with the NAIP GeoTIFFs")
    ap.add_argument("--copy", action="store_true", help="copy the files instead of symlinking")
    ap.add_argument("--all-dates", action="store_true", help="put all ten dates in the mosaic")
    ap.add_argument("--iou", type=float, default=None, help="override bench.json's IoU threshold")
    ap.add_argument("--write-truth", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.write_truth:
        write_truth()
        if not args.out_dir:
            return 0
    if not args.out_dir:
        ap.error("OUT_DIR is required")
    data = Path(args.data)
    if not data.is_dir():
        print(f"error: NAIP data folder not found: {data}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    (out / "mosaic").mkdir(parents=True, exist_ok=True)
    meta = json.loads((BENCH / "bench.json").read_text())
    if args.all_dates:
        meta["dates"] = {
            p.stem: f"{p.stem[-8:-4]}-{p.stem[-4:-2]}-{p.stem[-2:]}" for p in sorted(data.glob("*.tif"))
        }
    if args.iou is not None:
        meta["iou"] = args.iou
    for name in ("queries.jsonl", "regions.geojson"):
        shutil.copyfile(BENCH / name, out / name)
    (out / "bench.json").write_text(json.dumps(meta, indent=2) + "\n")
    for old in (out / "mosaic").iterdir():
        if old.stem not in meta["dates"]:
            old.unlink()
    for stem in meta["dates"]:
        src = data / f"{stem}.tif"
        if not src.is_file():
            print(f"error: missing NAIP file {src}", file=sys.stderr)
            return 2
        dst = out / "mosaic" / src.name
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        if args.copy:
            shutil.copyfile(src, dst)
        else:
            dst.symlink_to(src.resolve())
    print(
        f"{out}: {len(meta['dates'])} dates in mosaic/, {sum(1 for _ in open(out / 'queries.jsonl'))} queries"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
