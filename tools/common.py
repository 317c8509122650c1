"""Shared pieces of the tool layer: pydantic models at the boundary, path checks under the data
roots, a cache of open indexes (read-only, shared between requests, one lock each), PNG previews
and cached answers.

Tools are plain functions ``run(inp, ws, progress=None) -> Output`` over one engine call each; the
MCP server and the LangChain binding both serve them from :mod:`geosearch_tools.registry`. Engine results are
converted to the boundary models here, once (:func:`region_from_engine`).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Annotated, Any

import numpy as np
import shapely
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from shapely.geometry import box, mapping, shape

from geosearch.errors import GeoSearchError, InputError
from geosearch.settings import get_settings
from geosearch.timing import phase

ProgressFn = Callable[[float, float | None, str | None], None]
INDEX_SUFFIXES = {".duckdb", ".db", ".gsidx"}


# --- boundary models -----------------------------------------------------------------------
LIMITS = get_settings()  # the named limits (GEOSEARCH_MAX_*), read once at start
BBox = list[float]
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=LIMITS.max_prompt_chars)]
Prompts = Annotated[list[Prompt], Field(max_length=LIMITS.max_prompts)]
QueryText = Annotated[str, StringConstraints(max_length=LIMITS.max_query_chars)]
EvidenceIds = Annotated[
    list[Annotated[str, StringConstraints(max_length=200)]], Field(max_length=LIMITS.max_evidence_ids)
]


class StrictInput(BaseModel):
    """A tool's input: no coercion ("5" is not a number, "yes" not a boolean), no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")


def check_window_bbox(v: list[float] | None) -> list[float] | None:
    """A zoom / segment window: a valid bbox, neither vanishingly small nor huge."""
    v = _check_bbox(v)
    if v is None:
        return v
    w, h = v[2] - v[0], v[3] - v[1]
    if max(w, h) > LIMITS.max_window_deg:
        raise ValueError(f"window bbox is larger than {LIMITS.max_window_deg:g} degrees a side")
    lat = np.radians((v[1] + v[3]) / 2)
    if min(w * 111_320.0 * max(np.cos(lat), 1e-6), h * 110_574.0) < LIMITS.min_window_m:
        raise ValueError(f"window bbox is smaller than {LIMITS.min_window_m:g} m a side")
    return v


def _check_bbox(v: list[float] | None) -> list[float] | None:
    if v is None:
        return v
    if len(v) != 4 or not all(np.isfinite(x) for x in v):
        raise ValueError("a bbox needs four finite numbers [minx, miny, maxx, maxy] (lon/lat)")
    if not (v[0] < v[2] and v[1] < v[3]):
        raise ValueError("bbox must satisfy minx < maxx and miny < maxy")
    if not (-180 <= v[0] <= 180 and -180 <= v[2] <= 180 and -90 <= v[1] <= 90 and -90 <= v[3] <= 90):
        raise ValueError("bbox is not in lon/lat (EPSG:4326)")
    return [float(x) for x in v]


class TileOut(BaseModel):
    rank: int
    id: str = Field(description="tile id in the index")
    scale_m: float = Field(description="tile side in metres")
    score: float = Field(
        description="ranking score: cosine similarity with the query prompts (coarse_search with a "
        "context weight: averaged with that of the tile's neighbourhood)"
    )
    tile_score: float | None = Field(None, description="the tile's own cosine similarity with the prompts")
    bbox: list[float] = Field(description="[minx, miny, maxx, maxy] in EPSG:4326")
    polygon: dict[str, Any] = Field(description="GeoJSON Polygon in EPSG:4326")
    date: str | None = None


class RegionIn(StrictInput):
    """A region given to a tool: an id and a GeoJSON geometry (EPSG:4326) or a bbox."""

    id: str = Field(min_length=1, max_length=200)
    polygon: dict[str, Any] | None = Field(None, description="GeoJSON geometry in EPSG:4326")
    bbox: list[float] | None = Field(None, description="[minx, miny, maxx, maxy] in EPSG:4326")
    score: float | None = None
    evidence_tiles: EvidenceIds = Field(default_factory=list)

    _v_bbox = field_validator("bbox")(classmethod(lambda cls, v: _check_bbox(v)))

    def geometry(self):
        if self.polygon is not None:
            try:
                geom = shape(
                    self.polygon.get("geometry", self.polygon)
                    if self.polygon.get("type") == "Feature"
                    else self.polygon
                )
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"region {self.id!r}: invalid GeoJSON geometry ({exc})") from exc
        elif self.bbox is not None:
            geom = box(*self.bbox)
        else:
            raise InputError(f"region {self.id!r} needs a polygon or a bbox")
        if geom.is_empty:
            raise InputError(f"region {self.id!r} has an empty geometry")
        if shapely.get_num_coordinates(geom) > LIMITS.max_polygon_vertices:
            raise InputError(
                f"region {self.id!r} has more than {LIMITS.max_polygon_vertices} vertices "
                "(GEOSEARCH_MAX_POLYGON_VERTICES)"
            )
        minx, miny, maxx, maxy = geom.bounds
        if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
            raise InputError(f"region {self.id!r}: coordinates are not lon/lat (EPSG:4326)")
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        return geom


class RegionOut(BaseModel):
    id: str
    polygon: dict[str, Any] = Field(description="GeoJSON geometry in EPSG:4326")
    bbox: list[float] = Field(description="[minx, miny, maxx, maxy] in EPSG:4326")
    score: float
    confidence: float | None = None
    scale_m: float | None = None
    evidence_tiles: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)

    def as_input(self) -> RegionIn:
        return RegionIn(
            id=self.id, polygon=self.polygon, score=self.score, evidence_tiles=self.evidence_tiles
        )


def region_out(region_id: str, geom_wgs84, score: float, **kw: Any) -> RegionOut:
    return RegionOut(
        id=region_id,
        polygon=mapping(geom_wgs84),
        bbox=[float(v) for v in geom_wgs84.bounds],
        score=float(score),
        **kw,
    )


def region_from_engine(r) -> RegionOut:
    """A :class:`geosearch.pipeline.Region` as a RegionOut."""
    return region_out(
        r.region_id,
        r.polygon_wgs84,
        r.score,
        confidence=r.confidence,
        scale_m=r.scale_m,
        evidence_tiles=list(r.evidence_tiles),
        flags=list(r.flags),
        details=jsonable(r.details),
    )


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        if isinstance(value, float) and not np.isfinite(value):
            return None
        return value
    if hasattr(value, "geom_type"):
        return mapping(value)
    return str(value)


def parse_area(area: list[float] | dict[str, Any] | None):
    """A search area from a bbox (EPSG:4326) or a GeoJSON geometry / Feature / FeatureCollection."""
    if area is None:
        return None
    if isinstance(area, list):
        try:
            return box(*_check_bbox(area))  # type: ignore[misc]
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    from geosearch.geo import load_area

    geom, _ = load_area(area)
    return geom


# --- the workspace: roots, indexes, caches ------------------------------------------------
@dataclass
class IndexHandle:
    name: str
    path: Path
    index: Any  # geosearch.index.TileIndex
    lock: threading.RLock = field(default_factory=threading.RLock)
    mtime: float = 0.0


class Workspace:
    """What a server (or the CLI) may open: indexes under ``roots`` (all paths when roots is None)."""

    def __init__(
        self,
        roots: Sequence[str | Path] | None = None,
        *,
        settings=None,
        cache_size: int = 8,
        restrict: bool | None = None,
        warm: bool = True,
    ):
        from geosearch.settings import get_settings

        self.settings = settings or get_settings()
        raw = list(roots) if roots is not None else list(self.settings.data_roots)
        self.roots: list[Path] = []
        for r in raw:
            p = Path(r).expanduser()
            if not p.is_dir():
                raise InputError(f"data root is not a folder: {p}")
            self.roots.append(p.resolve())
        self.restricted = bool(self.roots) if restrict is None else restrict
        if self.restricted and not self.roots:
            raise InputError("no data roots configured: pass --root DIR (or set GEOSEARCH_DATA_ROOTS)")
        from geosearch.sandbox import OPEN, FilePolicy

        self.policy = (
            FilePolicy.for_roots(self.roots, self.settings.remote_prefixes) if self.restricted else OPEN
        )
        self._lock = threading.Lock()
        self._indexes: OrderedDict[Path, IndexHandle] = OrderedDict()
        self._opening: dict[Path, threading.Lock] = {}
        self._refused: dict[Path, tuple[float, InputError]] = {}
        self._cache_size = cache_size
        self.warm = warm  # read an opened index's ANN and arrays ahead (not for a one-shot CLI)
        self.answers: OrderedDict[str, dict] = OrderedDict()
        self.previews: OrderedDict[str, bytes] = OrderedDict()
        self._llm_complete: Callable[[str], str] | None = None

    # paths ---------------------------------------------------------------------------------
    def resolve(self, ref: str, *, what: str = "index") -> Path:
        """Resolve a user path; refuse ``..``, absolute paths and symlinks leading outside the roots."""
        if not isinstance(ref, str) or not ref.strip():
            raise InputError(f"empty {what} path")
        if "\x00" in ref:
            raise InputError(f"invalid {what} path")
        ref = ref.strip()
        if not self.restricted:
            p = Path(ref).expanduser()
            if not p.exists():
                raise InputError(f"{what} not found: {ref}")
            return p.resolve()
        if ".." in PurePath(ref).parts or ref.startswith("~"):
            raise InputError(f"{what} path {ref!r} is refused: '..' and '~' are not allowed")
        pure = PurePath(ref)
        candidates = [Path(ref)] if pure.is_absolute() else [root / ref for root in self.roots]
        outside = False
        for cand in candidates:
            real = cand.resolve()
            if not any(real.is_relative_to(root) for root in self.roots):
                outside = True
                continue
            if real.exists():
                return real
        if outside:
            raise InputError(f"{what} path {ref!r} is refused: it is outside the data roots")
        raise InputError(f"{what} not found under the data roots: {ref}")

    def display_name(self, path: Path) -> str:
        for root in self.roots:
            if path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return str(path)

    # indexes -------------------------------------------------------------------------------
    def handle(self, ref: str) -> IndexHandle:
        path = self.resolve(ref)
        if path.is_dir():
            raise InputError(f"index path is a folder: {ref}")
        from geosearch.index import TileIndex

        mtime = path.stat().st_mtime
        with self._lock:
            h = self._indexes.get(path)
            if h is not None and h.mtime == mtime:
                self._indexes.move_to_end(path)
                return h
            opening = self._opening.setdefault(path, threading.Lock())
        # one thread opens an index and loads its model; a burst of first calls waits for it
        # instead of loading the model fifty times over
        with opening:
            with self._lock:
                h = self._indexes.get(path)
                if h is not None and h.mtime == mtime:
                    return h
            refused = self._refused.get(path)
            if refused is not None and refused[0] == mtime:
                raise InputError(str(refused[1]))  # refused a moment ago: no second open
            try:
                with phase("index_open"):
                    index = TileIndex.open(path, policy=self.policy)
                index.check_files()  # a crafted index is refused before any work
            except InputError as exc:
                self._refused[path] = (mtime, exc)
                while len(self._refused) > 64:
                    self._refused.pop(next(iter(self._refused)))
                raise
            if self.warm:  # a server: the model now, and the store read ahead, for the next calls
                with phase("model_load"):
                    index.model(self.settings)
                if index.store is not None:
                    index.store.warm()
            # one query (the CLI): the model loads when a step needs the image tower; the starter's
            # text tower runs in numpy until then (an answer from stored proposals needs no torch)
            h = IndexHandle(self.display_name(path), path, index, mtime=mtime)
            with self._lock:
                self._indexes[path] = h
                while len(self._indexes) > self._cache_size:
                    self._indexes.popitem(last=False)
        return h

    @contextmanager
    def using(self, ref: str) -> Iterator[IndexHandle]:
        h = self.handle(ref)
        with h.lock:
            yield h

    def catalogue(self, max_files: int = 500) -> list[dict[str, Any]]:
        """Index files under the roots (by suffix; not opened)."""
        out: list[dict[str, Any]] = []
        for root in self.roots:
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fn in sorted(filenames):
                    p = Path(dirpath) / fn
                    if p.suffix.lower() not in INDEX_SUFFIXES or p.is_symlink():
                        continue
                    st = p.stat()
                    out.append(
                        {
                            "name": p.relative_to(root).as_posix(),
                            "root": str(root),
                            "size_bytes": st.st_size,
                            "modified": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st.st_mtime)),
                            "uri": f"geosearch://indexes/{p.relative_to(root).as_posix()}",
                        }
                    )
                    if len(out) >= max_files:
                        return out
        return out

    # caches --------------------------------------------------------------------------------
    def put_answer(self, geojson: dict) -> str:
        blob = repr(sorted(geojson.get("properties", {}).items())).encode() + str(time.time_ns()).encode()
        answer_id = hashlib.sha1(blob).hexdigest()[:12]
        with self._lock:
            self.answers[answer_id] = geojson
            while len(self.answers) > 256:
                self.answers.popitem(last=False)
        return answer_id

    def get_answer(self, answer_id: str) -> dict:
        with self._lock:
            if answer_id not in self.answers:
                raise InputError(f"no cached answer {answer_id!r} (answers live as long as the server)")
            return self.answers[answer_id]

    def put_preview(self, key: str, png: bytes) -> str:
        preview_id = hashlib.sha1(key.encode()).hexdigest()[:16]
        with self._lock:
            self.previews[preview_id] = png
            while len(self.previews) > 256:
                self.previews.popitem(last=False)
        return preview_id

    def get_preview(self, preview_id: str) -> bytes:
        with self._lock:
            if preview_id not in self.previews:
                raise InputError(f"no preview {preview_id!r}")
            return self.previews[preview_id]

    # optional LLM ---------------------------------------------------------------------------
    def llm_complete(self) -> Callable[[str], str] | None:
        """A text-completion function when an LLM endpoint is configured (else None)."""
        if self._llm_complete is not None:
            return self._llm_complete
        if not self.settings.llm_base_url:
            return None
        from geosearch.llm import complete_fn

        return complete_fn(self.settings)

    def set_llm_complete(self, fn: Callable[[str], str] | None) -> None:
        self._llm_complete = fn


# --- helpers of the tool boundary ---------------------------------------------------------
def tool_error_message(exc: BaseException) -> str:
    """A one-line, user-facing message for an exception raised by a tool."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ())) or "input"
            parts.append(f"{loc}: {err.get('msg')}")
        return "invalid input: " + "; ".join(parts)
    if isinstance(exc, GeoSearchError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def report(progress: ProgressFn | None, done: float, total: float | None, message: str | None) -> None:
    if progress is not None:
        try:
            progress(done, total, message)
        except Exception:  # noqa: BLE001 - progress must never break a tool
            pass
