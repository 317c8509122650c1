"""One settings object for the whole engine.

Values come from (highest first) explicit arguments, ``GEOSEARCH_*`` environment variables, then
the defaults below. Nothing else in the code reads the environment directly.
"""

from __future__ import annotations

import json
import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEVICES = "auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
MAX_CONTEXT = 100.0  # the largest neighbourhood weight (search --context, coarse_search's context)


def check_device(value: str, source: str = "--device") -> str:
    """``value`` if it names a device :func:`geosearch.models.base.resolve_device` knows, else an
    :class:`~geosearch.errors.InputError` naming ``source`` (the flag or variable) and the choices.
    Whether the device is present is checked when a model loads (``resolve_device``)."""
    text = _device_name(value)
    if text is None:
        from geosearch.errors import InputError

        raise InputError(f"{source} {value!r}: not a device; use {DEVICES}")
    return text


def _device_name(value: str) -> str | None:
    """The normalised device name, or None when ``value`` names none (the one rule for flag and setting)."""
    text = str(value).strip().lower()
    return text if _DEVICE.fullmatch(text) else None


class Settings(BaseSettings):
    # populate_by_name: Settings(remote_prefixes=...) works beside its environment names
    model_config = SettingsConfigDict(env_prefix="GEOSEARCH_", extra="ignore", populate_by_name=True)

    # Embedding model
    model: str = Field("geosearch-starter", description="Registry name or open_clip 'arch:checkpoint'.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default.")
    batch_size: int = Field(64, ge=1)
    image_views: int = Field(
        0,
        description="Dihedral views averaged per embedded image (1, 2, 4, 8); 0: the model's own "
        "default (1 for every registered model). Part of the model id: an index keeps its own.",
    )
    offline: bool = Field(False, description="Never download weights (HF_HUB_OFFLINE=1 also counts).")
    models_dir: Path = Field(
        Path.home() / ".cache" / "geosearch" / "models",
        description="Where downloaded / user checkpoints live.",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "geosearch",
        description="Small caches (weight checksums already verified, keyed by file size and times).",
    )

    # Tiling
    scales_m: Annotated[list[float], NoDecode] = Field(default_factory=lambda: [128.0, 256.0, 512.0, 1024.0])
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    min_valid_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="Tiles with less valid (non-nodata) area are skipped."
    )

    # Region proposals (geosearch.proposals): segments that follow image boundaries, found and
    # embedded at their own extent when the index is built, scored over the whole mosaic per query
    proposals: bool = Field(True, description="find and embed region proposals when indexing")
    proposal_backend: Literal["superpixels", "sam", "sam+superpixels"] = Field(
        "superpixels",
        description="superpixels (Felzenszwalb + selective search, no weights), sam (a SAM-family "
        "model's automatic masks; needs sam_weights) or sam+superpixels (both)",
    )
    sam_weights: Path | None = Field(
        None,
        description="local folder with a SAM-family checkpoint in Hugging Face format (SlimSAM, sam-vit-base)",
    )
    sam_points_per_side: int = Field(16, ge=1, description="SAM point prompts per block side (n x n grid)")
    sam_min_iou: float = Field(0.88, description="SAM masks with a lower predicted IoU are dropped")
    sam_min_stability: float = Field(
        0.95, le=1, description="SAM masks with a lower stability score are dropped"
    )

    # Search
    text_cache_size: int = 1024
    # Approximate nearest neighbours (geosearch.vectors): an IVF-SQ8 index written with the index's
    # vector store; its candidates are rescored exactly, and area / scale / date filters stay exact
    ann: Literal["auto", "on", "off"] = Field(
        "auto",
        description="auto: an ANN for indexes of at least ann_min_tiles tiles, exact search below, "
        "and a filtered search exact when scanning its tiles costs less; on: an ANN whatever the size, "
        "used for every search above ann_exact_below tiles; off: exact search (and no ANN built)",
    )
    ann_min_tiles: int = Field(200_000, ge=1, description="ann=auto builds an ANN from this many tiles")
    ann_exact_below: int = Field(
        20_000, ge=0, description="a search (after its filters) over at most this many tiles is exact"
    )
    ann_nprobe: int = Field(0, ge=0, description="IVF lists probed per query; 0: the index's calibrated one")
    ann_target_recall: float = Field(
        0.97, gt=0, le=1, description="recall@10 the nprobe calibrated at build time aims for"
    )
    ann_codes: Literal["pq", "sq8"] = Field(
        "pq", description="ANN codes: pq (d/4 bytes a vector) or sq8 (d bytes); both rescored exactly"
    )
    ann_rerank: int = Field(100, ge=1, description="ANN candidates rescored with the exact float32 vectors")

    # The answering chain (geosearch.chain): coarse-to-fine pyramid, segmentation, reranking,
    # abstention. Every eval result records these values; MethodContext.options may override any
    # of them by name for one call (``geosearch eval --option seg_windows=6``).
    search_context: float = Field(
        0.0,
        ge=0,
        le=MAX_CONTEXT,
        description="coarse ranking: weight of a tile's neighbourhood (same-scale tiles within half a "
        "side) against its own score; 0 (default) ranks tiles by their own score alone",
    )
    pyramid_top_n: int = Field(4, ge=1, description="coarse tiles (NMS'd) zoomed into per query")
    pyramid_depth: int = Field(2, ge=0, description="zoom levels below a coarse tile")
    pyramid_budget: int = Field(54, ge=0, description="windows embedded on the fly per query")
    pyramid_keep: int = Field(1, ge=1, description="children kept per parent and level")
    seg_windows: int = Field(4, ge=0, description="windows segmented per query")
    seg_source: Literal["stored", "crops"] = Field(
        "stored",
        description="stored: heatmap from stored tiles + pyramid windows (no reads); "
        "crops: read each window once and embed multi-scale crops",
    )
    seg_context: float = Field(2.0, gt=0, description="segmented square, times the coarse tile's side")
    seg_fracs: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.5, 1 / 3, 0.25],
        description="crop sizes (share of the side), seg_source=crops",
    )
    seg_threshold: float = Field(
        0.6, ge=0, le=1, description="heatmap threshold, share of the window's range"
    )
    seg_grid: int = Field(24, ge=4, description="heatmap cells per side")
    merge_iou: float = Field(0.5, gt=0, le=1, description="candidates overlapping this much are merged")
    merge_contain: float = Field(1.01, gt=0, description="> 1: off; else merge candidates this much inside")
    rerank_max: int = Field(16, ge=1, description="candidates re-embedded at their own extent")
    region_shape: Literal["bbox", "polygon"] = "bbox"
    whole_windows: int = Field(12, ge=0, description="best pyramid windows (NMS'd) that are candidates too")
    max_near_misses: int = Field(3, ge=0, description="near-misses returned with an abstention")
    fill: bool = Field(True, description="pad a short list with the next best (unrefined) windows")
    relation_pool: int = Field(3, ge=1, description="with relations: refine this many times k candidates")
    use_proposals: bool = Field(True, description="rank the index's region proposals (whole mosaic)")
    proposal_pool: int = Field(300, ge=1, description="best-scoring proposals considered per query")
    proposal_nms_iou: float = Field(0.5, gt=0, le=1, description="one region per thing: box IoU in metres")
    proposal_contain: float = Field(
        0.6, gt=0, description="> 1: off; else a proposal this much inside a better one is dropped"
    )
    proposal_grow: float = Field(
        0.02, ge=0, description="a proposal gives way to the largest one holding it that scores within this"
    )
    proposal_pyramid: bool = Field(False, description="also refine the pyramid's windows (reads, slower)")
    proposal_w_specific: float = Field(
        1.0, description="rerank weight of s_region - s_generic for proposals (option w_specific overrides)"
    )
    proposal_w_size: float = Field(
        0.1, description="rerank weight of log2(side / 100 m) for proposals (option w_size overrides)"
    )
    proposal_w_agree: float = Field(
        0.0,
        description="rerank weight of s_agree (gallery label agreement) for proposals (option w_agree overrides); "
        "0: it ranks a little better but weakens the abstention (docs/refinement.md section 0)",
    )

    # Limits on what one request may ask (the server refuses more, in one line, before any work)
    max_query_chars: int = Field(2000, ge=10, description="characters in a query")
    max_prompts: int = Field(256, ge=1, description="prompts embedded for one query (parsed or given)")
    max_prompt_chars: int = Field(300, ge=10, description="characters in one prompt")
    max_regions: int = Field(500, ge=1, description="regions given to check_relation")
    max_evidence_ids: int = Field(64, ge=1, description="evidence tile ids given with one region")
    max_polygon_vertices: int = Field(10_000, ge=4, description="vertices of one given polygon")
    max_window_deg: float = Field(2.0, gt=0, description="largest side of a zoom / segment window (degrees)")
    min_window_m: float = Field(1.0, gt=0, description="smallest side of a zoom / segment window (metres)")
    max_request_bytes: int = Field(4_000_000, ge=10_000, description="body of one HTTP request to the server")

    # Server
    serve_workers: int = Field(2, ge=1, description="requests the MCP server works on at once (threads)")
    serve_queue: int = Field(64, ge=0, description="requests that may wait beyond those; more get 'busy'")
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders the MCP server may open (env: os.pathsep-separated or JSON list).",
    )
    http_host: str = "127.0.0.1"
    http_port: int = 8765
    bearer_token: str | None = None
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header values the HTTP transport accepts besides loopback (env: comma-separated; "
        "'*' accepts any host and needs a bearer token), e.g. geo.example.org or geo.example.org:443",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser Origin values the HTTP transport accepts besides those of the allowed hosts "
        "(env: comma-separated), e.g. https://app.example.org",
    )
    remote_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("GEOSEARCH_REMOTE_PREFIXES", "GEOSEARCH_ALLOWED_URL_PREFIXES"),
        description="URL prefixes of the remote rasters a served index may name (env GEOSEARCH_REMOTE_PREFIXES, "
        "comma-separated), e.g. https://data.example.org/cogs/ ; empty: no remote raster. Everything else "
        "outside the data roots is refused. The CLI reads any URL its user gives. (The older name "
        "GEOSEARCH_ALLOWED_URL_PREFIXES is read too.)",
    )

    # Optional LLM (planner / parser / explanation)
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    # The LLM planner's chat model, any LangChain one: "provider:model" through langchain's
    # init_chat_model ("anthropic:claude-sonnet-4-5", "ollama:llama3.1", "openai:gpt-4o"; base URL
    # and key from llm_base_url / llm_api_key when set), or "package.module:factory" returning a
    # chat model. Unset: the built-in OpenAI-compatible client over llm_base_url.
    llm_chat_model: str | None = None

    @field_validator("scales_m", "data_roots", "seg_fracs", mode="before")
    @classmethod
    def _split_env_list(cls, value):
        """Environment lists: a JSON list, or separated by os.pathsep or commas."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            seps = os.pathsep + ","
            for sep in seps:
                text = text.replace(sep, "\n")
            return [part for part in text.split("\n") if part]
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        text = _device_name(value)
        if text is None:
            raise ValueError(f"not a device; use {DEVICES}")
        return text

    @field_validator("image_views")
    @classmethod
    def _check_views(cls, value: int) -> int:
        if value not in (0, 1, 2, 4, 8):
            raise ValueError("Input should be 0, 1, 2, 4 or 8")
        return value

    @field_validator("allowed_hosts", "allowed_origins", "remote_prefixes", mode="before")
    @classmethod
    def _split_hosts(cls, value):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [h for h in text.replace(",", " ").split() if h]
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings. A ``GEOSEARCH_*`` variable that does not validate is an
    :class:`~geosearch.errors.InputError` naming it (one line at the CLI, exit 2), not a traceback."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as e:
        from geosearch.errors import InputError

        err = e.errors()[0]
        name = str(err["loc"][0]).upper() if err.get("loc") else "?"
        raise InputError(
            f"environment variable GEOSEARCH_{name}={err.get('input')!r}: {err.get('msg', 'invalid')}"
        ) from None


CHAIN_FIELDS = (
    "search_context",
    "pyramid_top_n",
    "pyramid_depth",
    "pyramid_budget",
    "pyramid_keep",
    "seg_windows",
    "seg_source",
    "seg_context",
    "seg_fracs",
    "seg_threshold",
    "seg_grid",
    "merge_iou",
    "merge_contain",
    "rerank_max",
    "region_shape",
    "whole_windows",
    "max_near_misses",
    "fill",
    "relation_pool",
    "use_proposals",
    "proposal_pool",
    "proposal_nms_iou",
    "proposal_grow",
    "proposal_contain",
    "proposal_pyramid",
    "proposal_w_specific",
    "proposal_w_size",
    "proposal_w_agree",
)

# ``w_<name>`` options: the reranker's weights (geosearch.refine.rerank.RerankWeights) and the change
# methods' (geosearch.change.methods)
WEIGHT_OPTIONS = (
    "region",
    "source",
    "neg",
    "neg_margin",
    "specific",
    "context",
    "size",
    "agree",
    "change",
    "level",
    "spectral",
)


def check_options(options: dict | None) -> dict:
    """Per-call overrides checked like the settings themselves, before any work: a chain field gets
    its declared type and bounds (``pyramid_top_n=-3`` or ``region_shape="circle"`` are refused), a
    ``w_<name>`` must name a weight (:data:`WEIGHT_OPTIONS`) and be a finite number. Other keys (the
    methods' own options) pass unchanged. Returns the options, chain fields coerced to their types.
    Raises :class:`~geosearch.errors.InputError`."""
    from pydantic import ValidationError

    from geosearch.errors import InputError

    out = dict(options or {})
    probe = None
    for key, value in out.items():
        if key in CHAIN_FIELDS:
            probe = probe or Settings.model_construct()
            try:
                Settings.__pydantic_validator__.validate_assignment(probe, key, value)
            except ValidationError as e:
                msg = e.errors()[0].get("msg", str(e))
                raise InputError(f"option {key}={value!r}: {msg}") from None
            out[key] = getattr(probe, key)
        elif key.startswith("w_"):
            if key[2:] not in WEIGHT_OPTIONS:
                raise InputError(
                    f"unknown weight {key!r}; weights: {', '.join('w_' + w for w in WEIGHT_OPTIONS)}"
                )
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok:
                raise InputError(f"option {key}={value!r}: a weight is a finite number")
            out[key] = float(value)
    return out
