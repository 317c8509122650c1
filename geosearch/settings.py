"""One settings object for the whole engine.

Values come from (highest first) explicit arguments, ``GEOSEARCH_*`` environment variables, then
the defaults below. Nothing else in the code reads the environment directly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GEOSEARCH_", extra="ignore")

    # Embedding model
    model: str = Field("geosearch-starter", description="Registry name or open_clip 'arch:checkpoint'.")
    device: str = Field("auto", description="auto | cpu | cuda | mps")
    threads: int = Field(0, description="torch CPU threads; 0 keeps torch's default.")
    batch_size: int = Field(64, ge=1)
    models_dir: Path = Field(Path.home() / ".cache" / "geosearch" / "models",
                             description="Where downloaded / user checkpoints live.")

    # Tiling
    scales_m: list[float] = Field(default_factory=lambda: [128.0, 256.0, 512.0, 1024.0])
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    min_valid_fraction: float = Field(0.05, ge=0.0, le=1.0,
                                      description="Tiles with less valid (non-nodata) area are skipped.")

    # Search / refinement
    text_cache_size: int = 1024
    pyramid_top_n: int = 8
    pyramid_depth: int = 2
    pyramid_budget: int = 64

    # Server
    data_roots: list[Path] = Field(default_factory=list)
    http_host: str = "127.0.0.1"
    http_port: int = 8765
    bearer_token: str | None = None

    # Optional LLM (planner / parser / explanation)
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
