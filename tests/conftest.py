from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GEOSEARCH_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path in ../shared/data, skipping the test with a clear reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs real data at {path} (../shared/data is not present beside the checkout)")
    return path


@pytest.fixture(scope="session")
def tiny_settings():
    from geosearch.settings import Settings

    return Settings(model="geosearch-tiny", batch_size=16, scales_m=[64.0, 128.0], overlap=0.5)


@pytest.fixture(scope="session")
def tiny_model(tiny_settings):
    from geosearch.models import get_model

    return get_model("geosearch-tiny", settings=tiny_settings)
