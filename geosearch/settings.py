"""One settings object for the whole engine.

Values come from (highest first) explicit arguments, ``GEOSEARCH_*`` environment variables, then
the defaults below. Nothing else in the code reads the environment directly.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GEOSEARCH_", extra="ignore")

    # Embedding model
    model: str = Field("geosearch-starter", description="Registry name or open_clip 'arch:checkpoint'.")
    device: str = Field("auto", description="auto | cpu | cuda | mps")
    threads: int = Field(0, description="torch CPU threads; 0 keeps torch's default.")
    batch_size: int = Field(64, ge=1)
    offline: bool = Field(False, description="Never download weights (HF_HUB_OFFLINE=1 also counts).")
    models_dir: Path = Field(Path.home() / ".cache" / "geosearch" / "models",
                             description="Where downloaded / user checkpoints live.")

    # Tiling
    scales_m: Annotated[list[float], NoDecode] = Field(default_factory=lambda: [128.0, 256.0, 512.0, 1024.0])
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    min_valid_fraction: float = Field(0.05, ge=0.0, le=1.0,
                                      description="Tiles with less valid (non-nodata) area are skipped.")

    # Search / refinement
    text_cache_size: int = 1024
    pyramid_top_n: int = 8
    pyramid_depth: int = 2
    pyramid_budget: int = 64

    # Server
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Folders the MCP server may open (env: os.pathsep-separated or JSON list).")
    http_host: str = "127.0.0.1"
    http_port: int = 8765
    bearer_token: str | None = None

    # Optional LLM (planner / parser / explanation)
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None

    @field_validator("scales_m", "data_roots", mode="before")
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
