"""Serving under concurrency: the text cache is correct for any batch size, the model registry
is never seen half-filled, and a burst of first calls opens an index and loads its model once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def test_text_cache_is_correct_for_batches_larger_than_the_cache(tiny_model):
    texts = [f"w{i}" for i in range(2_100)]  # more new prompts than the cache holds (1,024)
    out = tiny_model.encode_text(texts)
    assert out.shape[0] == len(texts)
    again = tiny_model.encode_text(texts[:5] + texts[-5:])
    np.testing.assert_allclose(again, np.concatenate([out[:5], out[-5:]]), atol=1e-6)
    assert len(tiny_model._text_cache) <= tiny_model.text_cache_size


def test_text_cache_under_threads(tiny_model):
    words = [f"t{i}" for i in range(300)]
    ref = tiny_model.encode_text(words)

    def one(i: int) -> bool:
        sub = words[i % 50 :: 7]
        return bool(np.allclose(tiny_model.encode_text(sub), ref[i % 50 :: 7], atol=1e-6))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, range(64)))


def test_registry_is_never_half_filled(monkeypatch):
    from geosearch.models import registry

    monkeypatch.setattr(registry, "_builtin_done", False)
    monkeypatch.setattr(registry, "_REGISTRY", {})
    barrier = threading.Barrier(16)
    seen = []

    def one():
        barrier.wait()
        seen.append({s.name for s in registry.model_specs()})

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 16 and all(
        {"geosearch-tiny", "remoteclip-rn50", "geosearch-colour"} <= s for s in seen
    )


def test_a_burst_of_first_calls_loads_the_model_once(tmp_path, tiny_settings, monkeypatch):
    from geosearch.index import build_index
    from geosearch.models import registry
    from geosearch_tools.common import Workspace
    from tests.fixtures.rasters import write_raster

    write_raster(tmp_path / "m.tif", width=128, height=128)
    build_index([tmp_path / "m.tif"], tmp_path / "i.duckdb", settings=tiny_settings, progress=False)
    monkeypatch.setattr(registry, "_SHARED", {})
    loads = []
    real = registry.get_model

    def counting(*a, **k):
        loads.append(1)
        return real(*a, **k)

    monkeypatch.setattr(registry, "get_model", counting)
    ws = Workspace([tmp_path], settings=tiny_settings)
    barrier = threading.Barrier(12)

    def one(_):
        barrier.wait()
        return ws.handle("i.duckdb")

    with ThreadPoolExecutor(12) as pool:
        handles = list(pool.map(one, range(12)))
    assert len({id(h) for h in handles}) == 1 and len(loads) == 1
