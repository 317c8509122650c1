"""``geosearch upgrade INDEX``: write an index's vector store (and ANN) from its tiles."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "upgrade",
        help="write the memory-mapped vector store (and ANN) of an existing index",
        description="For an index from before format 2, or to rebuild its ANN after changing "
        "GEOSEARCH_ANN / GEOSEARCH_ANN_MIN_TILES. Reads the index's own tiles; no raster is read.",
    )
    p.add_argument("index")
    p.add_argument("--ann", choices=["auto", "on", "off"], default=None, help="default: GEOSEARCH_ANN (auto)")
    p.add_argument(
        "--rebuild", action="store_true", help="write the store and ANN anew even if current (other settings)"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from geosearch.index import upgrade_index
    from geosearch.settings import get_settings

    settings = get_settings()
    if args.ann:
        settings = settings.model_copy(update={"ann": args.ann})
    entry = upgrade_index(args.index, settings, rebuild=args.rebuild)
    mode = entry["search"]
    print(
        f"{args.index}: {entry['count']} tiles in the vector store; search {mode['mode']} ({mode['reason']})"
    )
    return 0
