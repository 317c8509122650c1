"""``geosearch index MOSAIC... --out INDEX``: build or resume a tile index (of local rasters, URLs
or STAC Items)."""

from __future__ import annotations

import json
from pathlib import Path

from geosearch_server.commands._common import positive_int


def register(sub) -> None:
    p = sub.add_parser("index", help="build (or resume) a multi-scale tile index of a mosaic")
    p.add_argument(
        "mosaic",
        nargs="+",
        help="raster files, folders of rasters, a VRT, URLs (https://, s3://, gs://: read with range "
        "requests) or STAC Item / ItemCollection JSON (a file or a URL); all in one CRS",
    )
    p.add_argument(
        "--asset",
        default=None,
        metavar="NAME",
        help="the asset of each STAC Item to index (default: the one with role 'data', else 'visual', "
        "else the one GeoTIFF / JPEG 2000)",
    )
    p.add_argument("--out", required=True, help="index file to create or resume (DuckDB)")
    p.add_argument("--model", default=None, help="model name or ARCH:CHECKPOINT (default: the starter model)")
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=None,
        help="tile sizes in metres (default 128 256 512 1024)",
    )
    p.add_argument("--overlap", type=float, default=None, help="tile overlap share (default 0.5)")
    p.add_argument(
        "--bands", type=int, nargs="+", default=None, help="band numbers giving R G B (or one band)"
    )
    p.add_argument("--stretch", choices=["auto", "percentile", "minmax", "none"], default="auto")
    p.add_argument("--date", default=None, help="acquisition date of this mosaic (YYYY-MM-DD)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="tiles per model batch (1 or more)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (1 or more; default: torch's)"
    )
    p.add_argument(
        "--proposals",
        choices=["superpixels", "sam", "sam+superpixels", "none"],
        default=None,
        help="region proposals found at index time: superpixels (default), sam (a SAM-family model, "
        "needs GEOSEARCH_SAM_WEIGHTS or --sam-weights), sam+superpixels, or none",
    )
    p.add_argument(
        "--sam-weights", default=None, help="local folder with a SAM-family checkpoint in Hugging Face format"
    )
    p.add_argument("--overwrite", action="store_true", help="rebuild from scratch if the index exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--ray",
        default=None,
        metavar="auto|ADDRESS",
        help="embed the tiles on Ray Data actors (pip install 'geosearch[ray]'): auto joins or starts "
        "a local Ray runtime, HOST:PORT joins a cluster; this process plans, writes proposals and merges",
    )
    p.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="Ray actors embedding tiles (default: one per GPU, else one per 2 CPUs of the cluster)",
    )
    p.set_defaults(func=run)


def settings_from_args(args):
    from geosearch.settings import get_settings

    updates = {}
    for name in ("model", "overlap", "batch_size", "device", "threads"):
        value = getattr(args, name, None)
        if value is not None:
            updates[name] = value
    if getattr(args, "scales", None):
        updates["scales_m"] = args.scales
    proposals = getattr(args, "proposals", None)
    if proposals == "none":
        updates["proposals"] = False
    elif proposals:
        updates["proposals"] = True
        updates["proposal_backend"] = proposals
    if getattr(args, "sam_weights", None):
        updates["sam_weights"] = Path(args.sam_weights)
    if updates.get("device") is not None:
        from geosearch.settings import check_device

        updates["device"] = check_device(updates["device"], "--device")
    settings = get_settings().model_copy(update=updates)
    if not 0 <= settings.overlap < 1:
        from geosearch.errors import InputError

        raise InputError("--overlap must be in [0, 1)")
    return settings


def run(args) -> int:
    settings = settings_from_args(args)
    if args.date is not None:
        from geosearch.index import check_date

        args.date = check_date(args.date)
    kwargs = dict(
        model=settings.model,
        settings=settings,
        bands=args.bands,
        stretch=args.stretch,
        overwrite=args.overwrite,
        progress=not args.quiet,
        date=args.date,
        asset=args.asset,
    )
    if getattr(args, "ray", None):  # Ray is imported only on this path
        from geosearch.distributed import build_index_ray

        report, stats = build_index_ray(
            args.mosaic, args.out, address=args.ray, workers=args.ray_workers, **kwargs
        )
        print(json.dumps({"index": args.out, **report.as_dict(), "ray": stats.as_dict()}, indent=2))
        return 0
    if getattr(args, "ray_workers", None) is not None:
        from geosearch.errors import InputError

        raise InputError("--ray-workers needs --ray auto|ADDRESS")
    from geosearch.index import build_index

    report = build_index(args.mosaic, args.out, **kwargs)
    print(json.dumps({"index": args.out, **report.as_dict()}, indent=2))
    return 0
