"""``geosearch relate``: test a spatial predicate for candidate regions against index layers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from geosearch.errors import GeoSearchError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``relate`` command."""
    p = subparsers.add_parser(
        "relate",
        help="check near / far_from / within / along / between / density ... for regions",
        description="geosearch relate INDEX REGIONS PREDICATE LAYER [DISTANCE_M]; "
        "between: geosearch relate INDEX REGIONS between LAYER_A LAYER_B DISTANCE_M",
    )
    p.add_argument("index", type=Path)
    p.add_argument("regions", type=Path, help="vector file of candidate regions (GeoJSON...)")
    p.add_argument("predicate")
    p.add_argument("layer")
    p.add_argument("rest", nargs="*", help="DISTANCE_M, or LAYER_B DISTANCE_M for between")
    p.add_argument("--threshold", default=None, help="along: min share (default 0.3); density: per km²")
    p.add_argument("--direction", choices=["above", "below"], default="above", help="density comparison")
    p.add_argument("--along-mode", choices=["boundary", "area"], default="boundary")
    p.add_argument("--id-field", default=None, help="property holding region ids (default: id, else row)")
    p.add_argument("--format", choices=["table", "geojson", "json"], default="table")
    p.set_defaults(func=_run)


def _split_rest(predicate: str, rest: list[str]) -> tuple[str | None, str | None]:
    if predicate.strip().lower() == "between":
        if len(rest) != 2:
            raise GeoSearchError(
                "between takes two layers and a distance: between LAYER_A LAYER_B DISTANCE_M"
            )
        return rest[1], rest[0]
    if len(rest) > 1:
        raise GeoSearchError(f"too many arguments after the layer: {' '.join(rest)}")
    return (rest[0] if rest else None), None


def _read_regions(path: Path, id_field: str | None) -> tuple[list[tuple[str, Any]], Any]:
    from geosearch.relations.layers import read_vector
    from geosearch.relations.safety import validate_column_name

    gdf = read_vector(path)
    if gdf.crs is None:
        gdf = gdf.set_crs("EPSG:4326")
    gdf = gdf.to_crs("EPSG:4326")
    cols = [str(c) for c in gdf.columns if c != gdf.geometry.name]
    if id_field is not None:
        ids = gdf[validate_column_name(id_field, cols)].astype(str).tolist()
    elif "id" in cols and not gdf["id"].duplicated().any():
        ids = gdf["id"].astype(str).tolist()
    else:
        ids = [str(i) for i in range(len(gdf))]
    return list(zip(ids, gdf.geometry, strict=True)), gdf


def _run(args: argparse.Namespace) -> int:
    from geosearch.relations import check_relation

    if not args.index.exists():
        raise GeoSearchError(f"index not found: {args.index}")
    distance, layer_b = _split_rest(args.predicate, args.rest)
    threshold = None
    if args.threshold is not None:
        try:
            threshold = float(args.threshold)
        except ValueError as exc:
            raise GeoSearchError(f"invalid threshold {args.threshold!r}") from exc
    regions, gdf = _read_regions(args.regions, args.id_field)
    results = check_relation(
        args.index,
        regions,
        args.predicate,
        args.layer,
        distance,
        layer_b,
        threshold=threshold,
        direction=args.direction,
        along_mode=args.along_mode,
    )
    if args.format == "json":
        print(json.dumps([r.as_dict() for r in results], indent=2))
    elif args.format == "geojson":
        out = gdf.copy()
        out["holds"] = [r.holds for r in results]
        out["value_m"] = [r.value if r.unit == "m" else None for r in results]
        out["value"] = [r.value for r in results]
        out["unit"] = [r.unit for r in results]
        out["nearest_id"] = [r.nearest_id for r in results]
        print(out.to_json(drop_id=True))
    else:
        print(f"{'region':<16} {'holds':<6} {'value':>14} {'unit':<8} nearest_id")
        for r in results:
            value = "-" if r.value is None else f"{r.value:.3f}"
            print(
                f"{r.region_id[:16]:<16} {'yes' if r.holds else 'no':<6} {value:>14} {r.unit:<8} {r.nearest_id or '-'}"
            )
        held = sum(r.holds for r in results)
        print(
            f"{held}/{len(results)} region(s) satisfy {args.predicate} {args.layer}"
            f"{' ' + layer_b if layer_b else ''}{' ' + str(distance) + ' m' if distance is not None else ''}"
        )
    return 0
