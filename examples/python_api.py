"""GeoSearch from Python: open an index, ask in words, take the answer into GIS and onto a map.

    python examples/python_api.py INDEX "a lake next to farmland"

Writes answer.gpkg (GeoPackage, EPSG:4326, one row per region with its provenance and score
breakdown) and answer.html (a self-contained map page) in the current folder."""

from __future__ import annotations

import sys

import geosearch


def main(index: str, text: str) -> int:
    gs = geosearch.open(index)
    print(gs)

    # the answering chain: the same regions `geosearch ask` and the MCP `answer` tool return
    answer = gs.ask(text, k=5)
    if answer.abstained:
        print(f"not found: {answer.reason}")
    else:
        print(f"{len(answer)} region(s)")
    for region in answer.regions or answer.near_misses:
        conf = "n/a" if region.confidence is None else f"{region.confidence:.2f}"
        print(f"  {region.region_id}: score {region.score:.3f}, confidence {conf}")

    # into GIS and onto a map
    frame = answer.to_geodataframe()
    print(frame[["rank", "kind", "id", "score", "confidence"]].to_string(index=False))
    print("wrote", answer.save("answer.gpkg"), "answer.gpkg")
    print("wrote the map page", answer.show("answer.html", open_browser=False))

    # plain tile search, the same result type
    tiles = gs.search(text, k=3)
    print("best tiles:", ", ".join(r.region_id for r in tiles))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
