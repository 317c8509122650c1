"""Retrieval methods behind one interface, so that the evaluator, the planner and the MCP tools
score and serve exactly the same code.

A method takes an open :class:`TileIndex`, the query *text only* (plus optional layers), and
returns an :class:`Answer`: ranked :class:`Region` objects with polygons in EPSG:4326, or an
abstention with its reason and the best near-misses. Methods register themselves with
:func:`register_method`; later stages (pyramid, segmentation, relations, abstention) add theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import mapping

from geosearch.errors import InputError
from geosearch.index import TileIndex
from geosearch.search import search
from geosearch.settings import check_options


@dataclass
class Region:
    region_id: str
    polygon_wgs84: object  # shapely geometry, EPSG:4326
    score: float
    confidence: float | None = None
    scale_m: float | None = None
    evidence_tiles: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def feature(self) -> dict:
        props = {
            "id": self.region_id,
            "score": round(float(self.score), 6),
            "confidence": None if self.confidence is None else round(float(self.confidence), 4),
            "scale_m": self.scale_m,
            "evidence_tiles": self.evidence_tiles,
            "flags": self.flags,
        }
        props.update({k: v for k, v in self.details.items() if k not in props})
        return {"type": "Feature", "geometry": mapping(self.polygon_wgs84), "properties": props}


def not_found_sentence(query: str, reason: str | None) -> str:
    """The explanation's first line for an abstention (the map page drops it under its own box)."""
    return f'Not found for "{query}": {(reason or "").removeprefix("not found: ")}.'


@dataclass
class Answer:
    query: str
    method: str
    regions: list[Region]
    abstained: bool = False
    reason: str | None = None
    near_misses: list[Region] = field(default_factory=list)
    full_res_reads: int = 0
    details: dict = field(default_factory=dict)
    explanation: str | None = None
    index: object | None = field(default=None, repr=False, compare=False)  # the TileIndex, for maps

    def __len__(self) -> int:
        return len(self.regions)

    def __bool__(self) -> bool:  # an abstention (no regions) is still an answer: `if answer:` holds
        return True

    def __iter__(self):
        return iter(self.regions)

    def to_geojson(self) -> dict:
        """The answer as a GeoJSON FeatureCollection (EPSG:4326), near-misses in its properties."""
        return self.geojson()

    def to_geodataframe(self):
        """One row per region (then near-misses, ``kind`` column), with provenance, EPSG:4326."""
        from geosearch.export import answer_frame

        return answer_frame(self.geojson())

    def save(self, path) -> str:
        """Write to ``path`` as GeoJSON, GeoPackage, FlatGeobuf, GeoParquet or CSV (by extension)."""
        from geosearch.export import write_answer

        return write_answer(self.geojson(), path)

    def to_html(self) -> str:
        """A self-contained map page (needs the index the answer came from)."""
        from geosearch.errors import InputError
        from geosearch.mapview import answer_map_html

        if self.index is None:
            raise InputError("this answer does not know its index: use geosearch.open(INDEX).ask(...)")
        return answer_map_html(self.index, self.geojson())

    def show(self, path=None, *, open_browser: bool = True):
        """Write the map page (default: a file in the temp folder) and open it in a browser;
        returns its path."""
        import tempfile
        import webbrowser
        from pathlib import Path

        from geosearch.fileio import atomic_write_text

        if path is None:
            fd, name = tempfile.mkstemp(prefix="geosearch-answer-", suffix=".html")
            import os

            os.close(fd)
            path = name
        path = Path(path)
        atomic_write_text(path, self.to_html())
        if open_browser:
            try:
                webbrowser.open(path.resolve().as_uri())
            except Exception:  # noqa: BLE001 - no browser is not an error: the file is there
                pass
        return path

    def _repr_html_(self) -> str | None:  # Jupyter shows the map inline
        if self.index is None:
            return None
        import html

        return f'<iframe srcdoc="{html.escape(self.to_html())}" style="width:100%;height:560px;border:0"></iframe>'

    def geojson(self) -> dict:
        """The answer as a GeoJSON FeatureCollection (EPSG:4326), near-misses in its properties."""
        return {
            "type": "FeatureCollection",
            "features": [r.feature() for r in self.regions],
            "properties": {
                "query": self.query,
                "method": self.method,
                "abstained": self.abstained,
                "reason": self.reason,
                "explanation": self.explanation,
                "full_res_reads": self.full_res_reads,
                "near_misses": [r.feature() for r in self.near_misses],
                **self.details,
            },
        }


@dataclass
class MethodContext:
    """What a method may use besides the query text: never ground truth."""

    layers_dir: str | None = None  # a folder of vector layers (benchmarks), else the index's own
    options: dict = field(default_factory=dict)  # per-call overrides of the chain's Settings fields
    area: object | None = None  # shapely geometry (EPSG:4326) the answer must lie in
    settings: object | None = None  # geosearch.settings.Settings (default: get_settings())
    parsed: object | None = None  # a ParsedQuery made elsewhere (an LLM parse)
    progress: Callable[[float, float | None, str | None], None] | None = None


MethodFn = Callable[[TileIndex, str, int, MethodContext], Answer]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    description: str
    fn: MethodFn


_METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, description: str) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        _METHODS[name] = MethodInfo(name, description, fn)
        return fn

    return deco


def list_methods() -> list[MethodInfo]:
    _load_plugins()
    return list(_METHODS.values())


def run_method(
    name: str, index: TileIndex, text: str, k: int = 10, context: MethodContext | None = None
) -> Answer:
    _load_plugins()
    if name not in _METHODS:
        raise InputError(f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}")
    if not isinstance(text, str) or not text.strip():
        raise InputError("empty query: give some words to search for")
    context = context or MethodContext()
    check_options(context.options)  # a bad override is refused before any work
    return _METHODS[name].fn(index, text, k, context)


# Modules that register further methods when they exist (refinement, relations, abstention...).
PLUGIN_MODULES = ["geosearch.chain", "geosearch.change.methods"]
_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import importlib

    for name in PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise


def hits_to_regions(hits) -> list[Region]:
    return [
        Region(
            region_id=h.tile_id,
            polygon_wgs84=h.polygon_wgs84,
            score=h.score,
            scale_m=h.scale_m,
            evidence_tiles=[h.tile_id],
        )
        for h in hits
    ]


@register_method("single-scale", "text-to-chip over one fixed tile scale (RemoteCLIP-style baseline)")
def single_scale(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    scales = np.unique(index.scales)
    wanted = float(ctx.options.get("scale_m", scales[len(scales) // 2]))
    scale = float(scales[np.argmin(np.abs(scales - wanted))])
    # a plain CLIP baseline: tiles ranked by their own score, without their neighbourhood
    return Answer(text, "single-scale", hits_to_regions(search(index, text, k, scales=[scale], context=0)))


@register_method("coarse", "multi-scale coarse tile search, no refinement")
def coarse(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    return Answer(
        text, "coarse", hits_to_regions(search(index, text, k, context=ctx.options.get("search_context")))
    )
