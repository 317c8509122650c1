"""The benchmark folder format (``/work/shared/bench/FORMAT.md``): reading and validation.

A benchmark folder holds ``bench.json``, ``mosaic/`` (GeoTIFF / COG files), ``regions.geojson``
(truth polygons, EPSG:4326), ``queries.jsonl`` and an optional ``layers/`` folder. Everything read
from disk is validated with pydantic; any problem becomes an :class:`InputError` naming the file
(and line) so that the CLI prints one line and exits with code 2.

Truth (``regions.geojson`` and each query's ``relevant``) is kept apart from the query texts: the
harness hands methods only :attr:`Benchmark.query_texts`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import shapely
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from shapely.geometry import shape

from geosearch.errors import InputError

QueryType = Literal["object", "scene", "attribute", "relation", "geo", "change", "absent"]
QUERY_TYPES: tuple[str, ...] = ("object", "scene", "attribute", "relation", "geo", "change", "absent")
RASTER_SUFFIXES = {".tif", ".tiff", ".geotiff", ".vrt"}
LAYER_SUFFIXES = {".geojson", ".json", ".gpkg", ".parquet", ".geoparquet"}


class BenchMeta(BaseModel):
    """``bench.json``."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    description: str = ""
    iou: float = Field(0.5, gt=0.0, le=1.0)
    k: list[int] = Field(default_factory=lambda: [1, 5, 10])

    @field_validator("k")
    @classmethod
    def _k_positive(cls, v: list[int]) -> list[int]:
        if not v or any(int(x) < 1 or int(x) > 100 for x in v):
            raise ValueError("k must be a non-empty list of integers in 1..100")
        return sorted(set(int(x) for x in v))


class QueryLine(BaseModel):
    """One line of ``queries.jsonl``."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    type: QueryType
    relevant: dict[str, int] = Field(default_factory=dict)

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is blank")
        return v

    @field_validator("relevant")
    @classmethod
    def _grades(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: g for k, g in v.items() if g not in (1, 2)}
        if bad:
            raise ValueError(f"grades must be 1 or 2, got {bad}")
        return v


class RegionProps(BaseModel):
    model_config = ConfigDict(extra="allow")  # extra properties are allowed and ignored

    id: str = Field(min_length=1)
    label: str = ""

    @field_validator("id", "label", mode="before")
    @classmethod
    def _as_str(cls, v):
        return v if v is None else str(v)


class RegionFeature(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["Feature"]
    geometry: dict
    properties: RegionProps


class RegionCollection(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["FeatureCollection"]
    features: list[RegionFeature]


@dataclass(frozen=True)
class TruthRegion:
    region_id: str
    label: str
    polygon_wgs84: object  # shapely Polygon / MultiPolygon, EPSG:4326


@dataclass(frozen=True)
class QueryTruth:
    """What the evaluator knows about a query: never handed to a method."""

    query_id: str
    qtype: str
    relevant: dict[str, int]

    @property
    def answerable(self) -> bool:
        return bool(self.relevant)


@dataclass
class Benchmark:
    root: Path
    meta: BenchMeta
    mosaic_files: list[Path]
    layers_dir: Path | None
    query_ids: list[str]
    query_texts: list[str]  # what the system under test may see
    _truth: list[QueryTruth]  # scored only after the answers are in
    _regions: dict[str, TruthRegion]

    def __len__(self) -> int:
        return len(self.query_ids)

    def truth(self, i: int) -> QueryTruth:
        return self._truth[i]

    @property
    def regions(self) -> dict[str, TruthRegion]:
        return self._regions

    @property
    def query_types(self) -> list[str]:
        return [t.qtype for t in self._truth]


def _err(path: Path, exc: ValidationError, line: int | None = None) -> InputError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
    at = f"{path}:{line}" if line is not None else str(path)
    return InputError(f"invalid {at}: {where}: {first.get('msg')} ({exc.error_count()} error(s))")


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise InputError(f"benchmark file missing: {path}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc


def load_meta(root: Path) -> BenchMeta:
    data = _read_json(root / "bench.json")
    try:
        return BenchMeta.model_validate(data)
    except ValidationError as exc:
        raise _err(root / "bench.json", exc) from exc


def load_queries(path: Path) -> list[QueryLine]:
    if not path.is_file():
        raise InputError(f"benchmark file missing: {path}")
    out: list[QueryLine] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            q = QueryLine.model_validate_json(line)
        except ValidationError as exc:
            raise _err(path, exc, n) from exc
        if q.id in seen:
            raise InputError(f"invalid {path}:{n}: duplicate query id {q.id!r}")
        if q.type == "absent" and q.relevant:
            raise InputError(
                f"invalid {path}:{n}: query {q.id!r} is of type 'absent' but lists relevant regions"
            )
        seen.add(q.id)
        out.append(q)
    if not out:
        raise InputError(f"{path} has no queries")
    return out


def load_regions(path: Path) -> dict[str, TruthRegion]:
    data = _read_json(path)
    try:
        coll = RegionCollection.model_validate(data)
    except ValidationError as exc:
        raise _err(path, exc) from exc
    regions: dict[str, TruthRegion] = {}
    for i, feat in enumerate(coll.features):
        rid = feat.properties.id
        if rid in regions:
            raise InputError(f"invalid {path}: duplicate region id {rid!r}")
        try:
            geom = shape(feat.geometry)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"invalid {path}: feature {i} ({rid}) has a bad geometry: {exc}") from exc
        if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty:
            raise InputError(
                f"invalid {path}: region {rid!r} must be a (non-empty) Polygon, got {geom.geom_type}"
            )
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        regions[rid] = TruthRegion(rid, feat.properties.label, geom)
    return regions


def mosaic_files(root: Path) -> list[Path]:
    folder = root / "mosaic"
    if not folder.is_dir():
        raise InputError(f"benchmark has no mosaic/ folder: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
    if not files:
        raise InputError(f"no GeoTIFF / COG file in {folder}")
    return files


def load_benchmark(root: str | Path) -> Benchmark:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"benchmark folder not found: {root}")
    meta = load_meta(root)
    files = mosaic_files(root)
    regions = load_regions(root / "regions.geojson")
    queries = load_queries(root / "queries.jsonl")
    for q in queries:
        missing = [r for r in q.relevant if r not in regions]
        if missing:
            raise InputError(f"query {q.id!r} refers to region(s) not in regions.geojson: {missing[:5]}")
    layers = root / "layers"
    layers_dir = layers if layers.is_dir() else None
    return Benchmark(
        root=root,
        meta=meta,
        mosaic_files=files,
        layers_dir=layers_dir,
        query_ids=[q.id for q in queries],
        query_texts=[str(q.text) for q in queries],
        _truth=[QueryTruth(q.id, q.type, dict(q.relevant)) for q in queries],
        _regions=regions,
    )
