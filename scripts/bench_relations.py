"""Benchmark ``near(50 m)`` for 10^4 candidate regions against 10^5 and 10^6 synthetic buildings.

Usage: python scripts/bench_relations.py OUT.json [--features 100000 1000000] [--regions 10000]

Buildings are 8-25 m squares at ~600 per km² (a dense city); the area grows with the feature
count so the density stays realistic. Each size is stored twice: with the persistent R-tree
index and without (DuckDB then builds a temporary R-tree inside its SPATIAL_JOIN).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geosearch.db import connect  # noqa: E402
from geosearch.relations import check_relation, store_layer  # noqa: E402

DENSITY_PER_KM2 = 600.0
ORIGIN = (650_000.0, 4_000_000.0)  # UTM 11N, Las Vegas-ish
CRS = "EPSG:32611"


def buildings(n: int, rng: np.random.Generator) -> tuple[gpd.GeoDataFrame, float]:
    """``n`` axis-aligned squares over a square area at :data:`DENSITY_PER_KM2`."""
    side = float(np.sqrt(n / DENSITY_PER_KM2) * 1000.0)
    x = ORIGIN[0] + rng.uniform(0, side, n)
    y = ORIGIN[1] + rng.uniform(0, side, n)
    half = rng.uniform(4, 12.5, n)
    geoms = shapely.box(x - half, y - half, x + half, y + half)
    return gpd.GeoDataFrame(geometry=geoms, crs=CRS), side


def regions(n: int, side: float, rng: np.random.Generator) -> list[tuple[str, object]]:
    """``n`` candidate squares (100-250 m) in lon/lat."""
    x = ORIGIN[0] + rng.uniform(0, side, n)
    y = ORIGIN[1] + rng.uniform(0, side, n)
    half = rng.uniform(50, 125, n)
    g = gpd.GeoSeries(shapely.box(x - half, y - half, x + half, y + half), crs=CRS).to_crs("EPSG:4326")
    return [(f"r{i}", geom) for i, geom in enumerate(g)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--features", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--regions", type=int, default=10_000)
    ap.add_argument("--distance", type=float, default=50.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    report: dict = {
        "regions": args.regions,
        "distance_m": args.distance,
        "density_per_km2": DENSITY_PER_KM2,
        "machine": platform.platform(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.features:
            gdf, side = buildings(n, rng)
            regs = regions(args.regions, side, rng)
            for rtree in (True, False):
                path = Path(tmp) / f"bench_{n}_{int(rtree)}.duckdb"
                con = connect(path)
                t0 = time.perf_counter()
                store_layer(
                    con, "buildings", gdf, source="synthetic", role="buildings", metric_crs=CRS, rtree=rtree
                )
                t_store = time.perf_counter() - t0
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    res = check_relation(con, regs, "near", "buildings", args.distance)
                    times.append(time.perf_counter() - t0)
                held = sum(r.holds for r in res)
                run = {
                    "features": n,
                    "area_km2": round((side / 1000) ** 2, 1),
                    "rtree_index": rtree,
                    "store_s": round(t_store, 2),
                    "near_s": [round(t, 3) for t in times],
                    "near_best_s": round(min(times), 3),
                    "regions_holding": held,
                }
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
                con.close()
                path.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
