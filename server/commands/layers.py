"""``geosearch layers``: register, derive, list and drop vector layers of an index."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geosearch.errors import GeoSearchError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``layers`` command and its sub-commands."""
    p = subparsers.add_parser("layers", help="manage vector layers (roads, water, buildings...) of an index")
    sub = p.add_subparsers(dest="layers_command", metavar="ACTION", parser_class=type(p))

    add = sub.add_parser("add", help="register a vector file (GeoJSON, GPKG, SHP, FGB, GeoParquet, OSM PBF)")
    add.add_argument("index", type=Path)
    add.add_argument("file", type=Path)
    add.add_argument("--name", required=True, help="layer name: lowercase letters, digits, _")
    add.add_argument(
        "--role", default=None, help="roads | water | buildings | vegetation | other (default: from name)"
    )
    add.add_argument("--id-column", default=None, help="property holding unique feature ids")
    add.add_argument("--replace", action="store_true", help="overwrite an existing layer of that name")
    add.set_defaults(func=_add)

    der = sub.add_parser("derive", help="derive a water / vegetation / built_up layer from a raster")
    der.add_argument("index", type=Path)
    der.add_argument("raster", help="the raster to derive from: a file or a URL (https://, s3://...)")
    der.add_argument("--kind", required=True, choices=["water", "vegetation", "built_up"])
    der.add_argument("--name", required=True)
    der.add_argument("--green", type=int, default=2)
    der.add_argument("--nir", type=int, default=4)
    der.add_argument("--red", type=int, default=3)
    der.add_argument("--blue", type=int, default=1)
    der.add_argument("--swir", type=int, default=None)
    der.add_argument("--threshold", type=float, default=None)
    der.add_argument(
        "--max-size", type=int, default=1024, help="decimate the raster to this many pixels a side"
    )
    der.add_argument("--replace", action="store_true")
    der.set_defaults(func=_derive)

    ls = sub.add_parser("list", help="list the layers of an index")
    ls.add_argument("index", type=Path)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)

    rm = sub.add_parser("drop", help="remove a layer")
    rm.add_argument("index", type=Path)
    rm.add_argument("name")
    rm.set_defaults(func=_drop)

    pr = sub.add_parser("priors", help="(re)compute per-tile GIS priors for roads / water / buildings layers")
    pr.add_argument("index", type=Path)
    pr.set_defaults(func=_priors)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _need_index(path: Path) -> None:
    if not path.exists():
        raise GeoSearchError(f"index not found: {path}")


def _print_info(info: object) -> None:
    d = info.as_dict()  # type: ignore[attr-defined]
    print(
        f"layer {d['name']}: {d['feature_count']} {d['geometry_type']} feature(s), role {d['role']}, "
        f"source CRS {d['crs']}, metric CRS {d['metric_crs']}{', derived' if d['derived'] else ''}"
    )


def _add(args: argparse.Namespace) -> int:
    from geosearch.relations import register_layer

    _need_index(args.index)
    info = register_layer(
        args.index, args.file, args.name, role=args.role, replace=args.replace, id_column=args.id_column
    )
    _report_layer(args.index, info)
    return 0


def _report_layer(index: str, info) -> None:
    """Print a registered layer; layers with a prior role refresh the per-tile GIS priors."""
    from geosearch.relations import compute_priors

    _print_info(info)
    if info.role in ("roads", "water", "buildings"):
        n = compute_priors(index, layers=[info.name])
        if n:
            print(f"tile priors: {n} row(s)")


def _derive(args: argparse.Namespace) -> int:
    from geosearch.relations import derive_layer

    _need_index(args.index)
    info = derive_layer(
        args.index,
        args.raster,
        args.kind,
        args.name,
        green=args.green,
        nir=args.nir,
        red=args.red,
        blue=args.blue,
        swir=args.swir,
        threshold=args.threshold,
        max_size=args.max_size,
        replace=args.replace,
    )
    _report_layer(args.index, info)
    return 0


def _list(args: argparse.Namespace) -> int:
    from geosearch.relations import list_layers

    _need_index(args.index)
    layers = list_layers(args.index)
    if args.json:
        print(json.dumps([i.as_dict() for i in layers], indent=2))
        return 0
    if not layers:
        print("no layers")
        return 0
    print(f"{'name':<20} {'role':<11} {'features':>9} {'type':<22} {'metric_crs':<12} derived  source")
    for i in layers:
        print(
            f"{i.name:<20} {i.role:<11} {i.feature_count:>9} {i.geometry_type[:22]:<22} {i.metric_crs[:12]:<12} "
            f"{'yes' if i.derived else 'no':<8} {i.source}"
        )
    return 0


def _drop(args: argparse.Namespace) -> int:
    from geosearch.relations import drop_layer

    _need_index(args.index)
    drop_layer(args.index, args.name)
    print(f"dropped layer {args.name}")
    return 0


def _priors(args: argparse.Namespace) -> int:
    from geosearch.relations import compute_priors

    _need_index(args.index)
    print(f"tile priors: {compute_priors(args.index)} row(s)")
    return 0
