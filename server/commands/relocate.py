"""``geosearch relocate INDEX NEW_FOLDER``: point an index at imagery that moved."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "relocate",
        help="point an index at its imagery after the rasters moved",
        description="Look for the index's rasters by file name under the given folders (recursively) "
        "or URL prefixes and record their new paths; refused unless they are the same imagery (content "
        "fingerprint: a local file and its copy at an http(s) URL are the same imagery).",
    )
    p.add_argument("index")
    p.add_argument(
        "location",
        nargs="+",
        help="folders (searched recursively), raster files, or URL prefixes (https://host/cogs/: each "
        "raster is expected there under its file name)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from geosearch.index import relocate_index

    moved = relocate_index(args.index, args.location)
    for date, files in moved.items():
        label = f" ({date})" if date else ""
        print(f"{args.index}{label}: {len(files)} raster(s) now at {', '.join(files[:3])}")
    return 0
