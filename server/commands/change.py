"""``geosearch change INDEX "new buildings" --from 2012 --to 2020 -k 10``: change queries over a
multi-date index (see docs/change.md)."""

from __future__ import annotations

import json

from geosearch_server.commands._common import format_table


def register(sub) -> None:
    p = sub.add_parser(
        "change", help="find what appeared / disappeared / changed between two dates of an index"
    )
    p.add_argument(
        "index", help="an index holding several dates (geosearch index MOSAIC --out IDX --date ...)"
    )
    p.add_argument("text", help='e.g. "new buildings", "fields that disappeared since 2012", "changed"')
    p.add_argument(
        "--from", dest="date_from", default=None, help="earlier date or year (default: parsed / first)"
    )
    p.add_argument("--to", dest="date_to", default=None, help="later date or year (default: parsed / last)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--spectral", action="store_true", help="add the NDVI/NDWI/bare-soil change (needs NIR)")
    p.add_argument("--scales", type=float, nargs="+", default=None)
    p.add_argument("--format", choices=["table", "geojson", "json"], default="table")
    p.set_defaults(func=run)


def run(args) -> int:
    from geosearch.errors import InputError
    from geosearch.index import TileIndex
    from geosearch.pipeline import MethodContext, run_method

    if args.k < 1:
        raise InputError("-k must be at least 1")
    index = TileIndex.open(args.index)
    opts = {"date_from": args.date_from, "date_to": args.date_to, "scales": args.scales}
    answer = run_method(
        "change+spectral" if args.spectral else "change",
        index,
        args.text,
        args.k,
        MethodContext(options={k: v for k, v in opts.items() if v}),
    )
    if args.format == "geojson":
        print(json.dumps(answer.geojson()))
    elif args.format == "json":
        print(json.dumps(answer.geojson(), indent=2))
    else:
        d = answer.details
        print(f"{d['kind']} {d['subject']!r}: {d['date_from']} -> {d['date_to']}")
        rows = [
            {
                "rank": i,
                "score": r.score,
                "scale_m": r.scale_m,
                "tile_id": r.region_id,
                "text_from": r.details["score_from"],
                "text_to": r.details["score_to"],
                "emb_change": r.details["embedding_change"],
                "bbox_wgs84": [round(v, 6) for v in r.polygon_wgs84.bounds],
            }
            for i, r in enumerate(answer.regions, start=1)
        ]
        print(
            format_table(
                rows,
                ["rank", "score", "scale_m", "tile_id", "text_from", "text_to", "emb_change", "bbox_wgs84"],
            )
        )
    return 0
