"""The Python API: ``geosearch.open(index).ask(...)`` runs the same answering chain as
``geosearch ask``, the MCP ``answer`` tool and ``geosearch eval``'s default method.

Every call returns one type, :class:`geosearch.pipeline.Answer` (ranked regions, or an abstention
with near-misses), with ``.to_geodataframe()``, ``.to_geojson()``, ``.save(path)`` and ``.show()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from geosearch.pipeline import Answer, MethodContext


class GeoSearch:
    """An open index."""

    def __init__(self, index_path: str | Path, settings=None):
        from geosearch.index import TileIndex
        from geosearch.settings import get_settings

        self.settings = settings or get_settings()
        self.index = TileIndex.open(index_path)

    def __repr__(self) -> str:
        return f"GeoSearch({str(self.index.path)!r}, {len(self.index)} tiles)"

    def info(self) -> dict:
        """Model, tiles per scale, mosaic, bounds and dates of the index."""
        return self.index.info()

    def ask(
        self,
        text: str,
        k: int = 5,
        *,
        bbox: Sequence[float] | None = None,
        area=None,
        explain: bool = True,
        layers_dir: str | None = None,
        **options,
    ) -> Answer:
        """Ranked regions (or an abstention) for a question in words; ``bbox`` is lon/lat, ``area`` a
        shapely geometry in EPSG:4326; further keyword arguments override the chain's settings
        (``pyramid_top_n=8``...)."""
        from geosearch.chain import answer

        ctx = MethodContext(
            area=_area(bbox, area),
            layers_dir=layers_dir,
            options={"explain": explain, **options},
            settings=self.settings,
        )
        ans = answer(self.index, text, k, ctx)
        ans.index = self.index
        return ans

    def search(
        self,
        text: str,
        k: int = 10,
        *,
        bbox: Sequence[float] | None = None,
        area=None,
        scales: Sequence[float] | None = None,
        date: str | None = None,
        context: float | None = None,
    ) -> Answer:
        """Coarse tile search (no refinement, no abstention): the best tiles as regions, ranked with
        their neighbourhood (``context``: its weight; default the setting ``search_context``)."""
        from geosearch.pipeline import hits_to_regions
        from geosearch.search import search

        hits = search(self.index, text, k, area=_area(bbox, area), scales=scales, date=date, context=context)
        ans = Answer(text, "search", hits_to_regions(hits), details={"provenance": self.index.provenance()})
        ans.index = self.index
        return ans

    def relate(
        self,
        regions: Answer | Sequence,
        predicate: str,
        layer: str,
        *,
        distance_m: float | None = None,
        layer_b: str | None = None,
        threshold: float | None = None,
        negated: bool = False,
    ) -> dict[str, dict]:
        """Check a GIS relation (near / far_from / within / intersects / contains / along / between /
        density / edge_of) against one of the index's layers, for each region of an answer (or for
        ``(id, shapely geometry in EPSG:4326)`` pairs): ``{region_id: result}``, where a result has
        ``holds``, ``satisfied`` (as asked, honouring ``negated``), ``value`` and ``unit``."""
        from geosearch.query import RelationSpec
        from geosearch.relations.apply import check_regions

        pairs = (
            [(r.region_id, r.polygon_wgs84) for r in regions.regions + regions.near_misses]
            if isinstance(regions, Answer)
            else [(str(i), g) for i, g in regions]
        )
        spec = RelationSpec(
            predicate=predicate,
            layer=layer,
            layer_b=layer_b,
            distance_m=distance_m,
            threshold=threshold,
            negated=negated,
        )
        results = check_regions(self.index.path, pairs, spec)
        return {rid: results[rid][0] for rid, _ in pairs if results.get(rid)}


def _area(bbox, area):
    if bbox is not None:
        from shapely.geometry import box

        if len(bbox) != 4:
            from geosearch.errors import InputError

            raise InputError("bbox is [min_lon, min_lat, max_lon, max_lat]")
        return box(*bbox)
    return area


def open(index_path: str | Path, settings=None) -> GeoSearch:  # noqa: A001 - geosearch.open(...) reads well
    return GeoSearch(index_path, settings)


def ask(index_path: str | Path, text: str, k: int = 5, **kw) -> Answer:
    return open(index_path).ask(text, k, **kw)


def index(
    mosaic: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    model: str | None = None,
    scales: Sequence[float] | None = None,
    overlap: float | None = None,
    bands: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    settings=None,
    asset: str | None = None,
) -> GeoSearch:
    """Build (or resume) the index of a mosaic (a raster, several, a folder, a VRT, URLs, or STAC
    Items / ItemCollections, ``asset`` naming the asset to use) at ``out``, then open it."""
    from geosearch.index import build_index
    from geosearch.settings import get_settings

    settings = settings or get_settings()
    upd = {}
    if scales is not None:
        upd["scales_m"] = [float(s) for s in scales]
    if overlap is not None:
        upd["overlap"] = float(overlap)
    if upd:
        settings = settings.model_copy(update=upd)
    inputs = [mosaic] if isinstance(mosaic, (str, Path)) else list(mosaic)
    build_index(
        inputs,
        out,
        model=model,
        settings=settings,
        bands=bands,
        overwrite=overwrite,
        progress=progress,
        asset=asset,
    )
    return GeoSearch(out, settings)
