"""``geosearch like INDEX --tile ID | --bbox ... [--text "but closer to the river"] [--negative ID ...]``:
query by example, optionally modified by text (see docs/change.md)."""

from __future__ import annotations

import json

from geosearch_server.commands._common import format_table


def register(sub) -> None:
    p = sub.add_parser("like", help="find places like an example region (tile id, bbox or polygon)")
    p.add_argument("index")
    ex = p.add_mutually_exclusive_group(required=True)
    ex.add_argument("--tile", nargs="+", metavar="ID", help="example tile id(s) (a result id)")
    ex.add_argument("--bbox", type=float, nargs=4, metavar=("MINX", "MINY", "MAXX", "MAXY"))
    ex.add_argument("--area", help="GeoJSON / vector file with the example polygon")
    p.add_argument("--bbox-crs", default=None, help="CRS of --bbox (default EPSG:4326, lon/lat)")
    p.add_argument(
        "--text", default=None, help='modification, e.g. "but closer to the river", "without the ships"'
    )
    p.add_argument("--negative", nargs="+", default=[], metavar="ID", help="tile ids of negative examples")
    p.add_argument(
        "--lambda", dest="lam", type=float, default=0.5, help="image weight λ in [0, 1] (default 0.5)"
    )
    p.add_argument("--date", default=None, help="date of a multi-date index (default: the latest)")
    p.add_argument(
        "--prior", default=None, help="AlphaEarth-format embedding field used as a reranking prior"
    )
    p.add_argument("--keep-examples", action="store_true", help="do not drop tiles overlapping the examples")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--format", choices=["table", "geojson", "json"], default="table")
    p.set_defaults(func=run)


def run(args) -> int:
    from geosearch.change.compose import Example, query_by_example
    from geosearch.geo import area_from_bbox, load_area
    from geosearch.index import TileIndex
    from geosearch_server.commands.search import check_bbox_crs

    check_bbox_crs(args)
    index = TileIndex.open(args.index)
    if args.tile:
        pos = [Example(tile_id=t, date=args.date) for t in args.tile]
    elif args.bbox:
        geom, crs = area_from_bbox(args.bbox, args.bbox_crs or "EPSG:4326")
        pos = [Example(geometry=geom, crs=crs, date=args.date)]
    else:
        geom, crs = load_area(args.area)
        pos = [Example(geometry=geom, crs=crs, date=args.date)]
    neg = [Example(tile_id=t, date=args.date) for t in args.negative]
    answer = query_by_example(
        index,
        pos,
        neg,
        args.text,
        args.k,
        lam=args.lam,
        date=args.date,
        exclude_examples=not args.keep_examples,
        prior=args.prior,
    )
    if args.format == "geojson":
        print(json.dumps(answer.geojson()))
    elif args.format == "json":
        print(json.dumps(answer.geojson(), indent=2))
    else:
        rows = [
            {
                "rank": i,
                "score": r.score,
                "similarity": r.details["similarity"],
                "scale_m": r.scale_m,
                "id": r.region_id,
                "bbox_wgs84": [round(v, 6) for v in r.polygon_wgs84.bounds],
            }
            for i, r in enumerate(answer.regions, start=1)
        ]
        print(format_table(rows, ["rank", "score", "similarity", "scale_m", "id", "bbox_wgs84"]))
    return 0
