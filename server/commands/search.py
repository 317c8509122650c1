"""``geosearch search INDEX "text"``: coarse text search over the tiles."""

from __future__ import annotations

import json

from geosearch_server.commands._common import format_table


def register(sub) -> None:
    p = sub.add_parser("search", help="rank tiles of an index by a text query")
    p.add_argument(
        "index", help="index file, or a quoted glob of shard indexes of one model ('province/*.duckdb')"
    )
    p.add_argument("text")
    p.add_argument("-k", type=int, default=10)
    area = p.add_mutually_exclusive_group()
    area.add_argument("--area", help="GeoJSON / vector file restricting the search")
    area.add_argument("--bbox", type=float, nargs=4, metavar=("MINX", "MINY", "MAXX", "MAXY"))
    p.add_argument("--bbox-crs", default=None, help="CRS of --bbox (default EPSG:4326, lon/lat)")
    p.add_argument("--scales", type=float, nargs="+", default=None)
    p.add_argument(
        "--context",
        type=float,
        default=None,
        metavar="W",
        help="weight of each tile's neighbourhood (same-scale tiles within half a side) in the ranking, "
        "0 to 100: 1 finds the place whose surroundings match too, over scenes larger than the tiles "
        "(default: setting search_context, 0: each tile by its own score)",
    )
    p.add_argument("--format", choices=["table", "geojson", "json"], default="table")
    p.set_defaults(func=run, fast_exit=True)  # read-only: no interpreter teardown (cli._exit_now)


def parse_area(args):
    from geosearch.geo import area_from_bbox, load_area

    if getattr(args, "area", None):
        return load_area(args.area)
    if getattr(args, "bbox", None):
        return area_from_bbox(args.bbox, getattr(args, "bbox_crs", None) or "EPSG:4326")
    return None, "EPSG:4326"


def check_bbox_crs(args) -> None:
    """``--bbox-crs`` only means something with ``--bbox``; alone it is refused (exit 2), not ignored."""
    from geosearch.errors import InputError

    if getattr(args, "bbox_crs", None) is not None and not getattr(args, "bbox", None):
        raise InputError("--bbox-crs needs --bbox (it gives the CRS of the --bbox numbers)")


def hits_geojson(hits) -> dict:
    from shapely.geometry import mapping

    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": mapping(h.polygon_wgs84),
                "properties": {k: v for k, v in h.as_dict().items() if k != "polygon_wgs84"},
            }
            for h in hits
        ],
    }


def index_paths(arg: str) -> list[str]:
    """An index path as given, or the sorted files a glob pattern matches (shards)."""
    import glob
    import os

    from geosearch.errors import InputError

    if os.path.exists(arg) or not glob.has_magic(arg):
        return [arg]
    found = sorted(p for p in glob.glob(arg) if os.path.isfile(p))
    if not found:
        raise InputError(f"no index file matches {arg!r}")
    return found


def run(args) -> int:
    import sys

    from geosearch.errors import InputError
    from geosearch.index import TileIndex
    from geosearch.search import search, search_shards
    from geosearch.settings import MAX_CONTEXT

    if not args.text.strip():
        raise InputError("empty query: give some words to search for")
    if args.context is not None and not 0 <= args.context <= MAX_CONTEXT:  # NaN fails both
        raise InputError(f"--context must be a number from 0 to {MAX_CONTEXT:g}, not {args.context}")
    check_bbox_crs(args)
    indexes = [TileIndex.open(path) for path in index_paths(args.index)]
    for index in indexes:
        if not index.complete:
            print(f"warning: {index.incomplete_note()}", file=sys.stderr)
        if index.upgrade_note():
            print(f"note: {index.upgrade_note()}", file=sys.stderr)
    area, crs = parse_area(args)
    opts = dict(area=area, area_crs=crs, scales=args.scales, context=args.context)
    if len(indexes) == 1:
        hits = search(indexes[0], args.text, args.k, **opts)
    else:
        hits = search_shards(indexes, args.text, args.k, **opts)
    if args.format == "geojson":
        print(json.dumps(hits_geojson(hits)))
    elif args.format == "json":
        print(json.dumps([h.as_dict() for h in hits], indent=2))
    else:
        rows = [
            {
                "rank": h.rank,
                "score": h.score,
                "tile_score": h.tile_score,
                "scale_m": h.scale_m,
                "tile_id": h.tile_id,
                "bbox_wgs84": [round(v, 6) for v in h.bbox_wgs84],
                "index": h.index,
            }
            for h in hits
        ]
        shards = ["index"] if len(indexes) > 1 else []
        print(
            format_table(rows, ["rank", "score", "tile_score", "scale_m", "tile_id", *shards, "bbox_wgs84"])
        )
    return 0
