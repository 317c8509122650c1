"""geosearch.fileio: atomic writes never leave a half-written file or stray temporaries."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from geosearch.fileio import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_text_replaces_whole_file(tmp_path):
    dst = tmp_path / "out.txt"
    dst.write_text("x" * 10_000)
    atomic_write_text(dst, "short\n")
    assert dst.read_text() == "short\n"
    assert _names(tmp_path) == ["out.txt"]


def test_bytes_and_parent_created(tmp_path):
    dst = tmp_path / "a" / "b" / "blob.bin"
    atomic_write_bytes(dst, b"\x00\x01\x02")
    assert dst.read_bytes() == b"\x00\x01\x02"
    assert _names(dst.parent) == ["blob.bin"]


def test_json_matches_cli_format(tmp_path):
    dst = tmp_path / "r.json"
    atomic_write_json(dst, {"a": 1, "p": tmp_path})
    assert dst.read_text() == json.dumps({"a": 1, "p": str(tmp_path)}, indent=2) + "\n"
    atomic_write_json(dst, [1, 2], indent=None)
    assert dst.read_text() == "[1, 2]\n"


def test_exception_keeps_old_content_and_leaves_no_temp(tmp_path):
    dst = tmp_path / "keep.npy"
    dst.write_bytes(b"old")
    seen = []
    with pytest.raises(RuntimeError, match="boom"), atomic_path(dst) as tmp:
        seen.append(tmp)
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("boom")
    assert dst.read_bytes() == b"old"
    assert not seen[0].exists()
    assert _names(tmp_path) == ["keep.npy"]


def test_keyboard_interrupt_also_cleans_up(tmp_path):
    dst = tmp_path / "k.txt"
    with pytest.raises(KeyboardInterrupt), atomic_path(dst) as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert _names(tmp_path) == []


def test_temp_is_hidden_in_same_folder_with_suffix(tmp_path):
    dst = tmp_path / "model.gallery.npz"
    with atomic_path(dst) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".model.gallery.npz.")
        assert tmp.suffix == ".npz"
        assert not dst.exists()  # nothing appears at the destination before the rename
        tmp.write_bytes(b"x")
    with atomic_path(dst, suffix=".tif") as tmp:
        assert tmp.suffix == ".tif"
        tmp.write_bytes(b"y")
    assert dst.read_bytes() == b"y"


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_permissions_follow_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "t.txt", "x")
        with atomic_path(tmp_path / "p.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for name in ("t.txt", "p.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_np_save_through_atomic_path(tmp_path):
    dst = tmp_path / "arr.npy"
    dst.write_bytes(b"stale")
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    with atomic_path(dst) as tmp:
        np.save(tmp, arr)
    np.testing.assert_array_equal(np.load(dst), arr)
    assert _names(tmp_path) == ["arr.npy"]


def test_np_savez_with_explicit_suffix(tmp_path):
    dst = tmp_path / "g.bin"  # no .npz suffix: np.savez would append one
    with atomic_path(dst, suffix=".npz") as tmp:
        np.savez_compressed(tmp, a=np.ones(3))
    np.testing.assert_array_equal(np.load(dst)["a"], np.ones(3))
    assert _names(tmp_path) == ["g.bin"]


def test_writer_appending_extension_is_an_error_not_an_empty_file(tmp_path):
    dst = tmp_path / "cache.bin"
    dst.write_bytes(b"old")
    with pytest.raises(ValueError, match="suffix='.npy'"), atomic_path(dst) as tmp:
        np.save(tmp, np.zeros(2))  # writes <tmp>.npy, leaving tmp empty
    assert dst.read_bytes() == b"old"
    assert _names(tmp_path) == ["cache.bin"]


def test_cli_common_reexports():
    from geosearch_server.commands import _common

    assert _common.atomic_write_text is atomic_write_text
    assert _common.atomic_write_json is atomic_write_json
