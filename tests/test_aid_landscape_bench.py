"""The AID dev bench on a landscape background (``--background``), on a generated AID folder and a
generated background raster: no ../shared data needed."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from shapely.geometry import box, shape
from skimage.measure import label, regionprops

from geosearch.errors import InputError
from geosearch.eval import aid_bench
from geosearch.eval.aid_bench import CRS, GAP_PX, GSD_M, build_aid_bench
from geosearch.geo import WGS84, reproject_geom
from geosearch_server.cli import main

BG_COLOUR = (30, 90, 40)  # the generated landscape: one colour no chip pixel has (chips have red >= 150)
PRESENT = ("Beach", "Forest", "Pond")
LEFT_OUT = ("Airport",)


@pytest.fixture(scope="module")
def aid(tmp_path_factory) -> Path:
    """A fake AID folder: 2 dev chips per present class, 2 of a left-out class, a train and a test row."""
    root = tmp_path_factory.mktemp("aid")
    rng = np.random.default_rng(7)
    rows = []
    for cls, n, split in [*((c, 2, "dev") for c in PRESENT), (LEFT_OUT[0], 2, "dev"), ("Beach", 1, "train")]:
        for i in range(n):
            rel = f"images/{cls}/{cls.lower()}_{split}_{i}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            blocks = rng.integers(0, 256, size=(5, 5, 3))
            blocks[..., 0] = rng.integers(170, 256, size=(5, 5))
            img = np.kron(blocks, np.ones((8, 8, 1))).astype(np.uint8)  # 40x40, smooth 8 px blocks
            Image.fromarray(img).save(root / rel, quality=95)
            caps = [f"a {cls.lower()} number {i} seen from above with {w} things" for w in ("many", "some")]
            rows.append({"path": rel, "class": cls, "split": split, "captions": caps})
    rows.append({"path": "images/Beach/beach_test.jpg", "class": "Beach", "split": "test", "captions": []})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def landscape(tmp_path_factory) -> Path:
    """A small uniform 3-band uint8 raster at 5 m (smaller than the mosaic: it gets mirror-tiled)."""
    path = tmp_path_factory.mktemp("bg") / "landscape.tif"
    h, w = 40, 50
    img = np.stack([np.full((h, w), v, np.uint8) for v in BG_COLOUR])
    profile = dict(driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs="EPSG:32614")
    with rasterio.open(path, "w", transform=from_origin(500_000, 5_200_000, 5.0, 5.0), **profile) as dst:
        dst.write(img)
    return path


def _build(out: Path, aid: Path, background, seed: int = 4) -> dict:
    return build_aid_bench(
        out, data_dir=aid, n_chips=None, seed=seed, leave_out=list(LEFT_OUT), background=background
    )


@pytest.fixture(scope="module")
def built(aid, landscape, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    _build(out, aid, landscape)
    return out


def _mosaic(bench: Path):
    with rasterio.open(bench / "mosaic" / "aid_dev.tif") as ds:
        return ds.read(), ds.transform, ds.crs, ds.count


def _regions_utm(bench: Path) -> list[tuple[dict, object]]:
    fc = json.loads((bench / "regions.geojson").read_text())
    return [(f["properties"], reproject_geom(shape(f["geometry"]), WGS84, CRS)) for f in fc["features"]]


def test_rgb_with_no_holes_and_bench_json(built, landscape):
    img, transform, crs, count = _mosaic(built)
    assert count == 3 and crs.to_string() == CRS and transform.a == GSD_M
    assert img.min(axis=0).max() > 0  # a real background, not zeros
    assert all((img[b] == v).any() for b, v in enumerate(BG_COLOUR))
    meta = json.loads((built / "bench.json").read_text())
    assert meta["layout"] == "scattered" and meta["seed"] == 4 and meta["left_out_classes"] == list(LEFT_OUT)
    assert meta["background"]["source"] == "file" and meta["background"]["files"] == [str(landscape)]
    assert meta["n_chips"] == 2 * len(PRESENT)


def test_chips_sit_on_the_background_where_the_regions_say(built, aid):
    img, transform, _crs, _count = _mosaic(built)
    chip_mask = (img != np.array(BG_COLOUR, np.uint8)[:, None, None]).any(axis=0)
    found = sorted(regionprops(label(chip_mask)), key=lambda p: p.bbox)
    regions = _regions_utm(built)
    assert len(found) == len(regions) == 2 * len(PRESENT)
    assert {p["label"] for p, _ in regions} == set(PRESENT)
    # chips never overlap and keep at least the gap between them
    for (_, a), (_, b) in combinations(regions, 2):
        assert a.intersection(b).area < 1e-6 and a.distance(b) >= GAP_PX * GSD_M - 0.01
    for props, poly in regions:
        # where the chip really is in the mosaic (its non-background pixels), in map coordinates
        matches = []
        for p in found:
            r0, c0, r1, c1 = p.bbox
            x0, y0 = transform @ (c0, r0)
            x1, y1 = transform @ (c1, r1)
            written = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            iou = written.intersection(poly).area / written.union(poly).area
            if iou > 0.5:
                matches.append((iou, p.bbox))
        assert len(matches) == 1 and matches[0][0] > 0.99, props
        r0, c0, r1, c1 = matches[0][1]
        size = int(round(props["width_m"] / GSD_M))
        assert (r1 - r0, c1 - c0) == (size, size)
        # the mosaic holds exactly the resized chip
        with Image.open(aid / props["source"]) as im:
            want = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)).transpose(2, 0, 1)
        assert np.array_equal(img[:, r0:r1, c0:c1], want)
        # and a ring of background (not zero) all around it, inside the mosaic
        ring = img[:, r0 - GAP_PX : r1 + GAP_PX, c0 - GAP_PX : c1 + GAP_PX].copy()
        assert r0 >= GAP_PX and c0 >= GAP_PX and r1 + GAP_PX <= img.shape[1] and c1 + GAP_PX <= img.shape[2]
        ring[:, GAP_PX:-GAP_PX, GAP_PX:-GAP_PX] = np.array(BG_COLOUR, np.uint8)[:, None, None]
        assert (ring == np.array(BG_COLOUR, np.uint8)[:, None, None]).all()


def test_queries_are_those_of_the_shelf_bench(built, aid, tmp_path):
    shelf = tmp_path / "shelf"
    build_aid_bench(shelf, data_dir=aid, n_chips=None, seed=4, leave_out=list(LEFT_OUT))
    assert (shelf / "queries.jsonl").read_text() == (built / "queries.jsonl").read_text()
    qs = [json.loads(line) for line in (built / "queries.jsonl").read_text().splitlines()]
    assert {q["type"] for q in qs} == {"scene", "absent"}
    assert any(q["type"] == "absent" and "airport" in q["text"] for q in qs)
    sources = {p["source"] for p, _ in _regions_utm(built)}
    assert all("_dev_" in s for s in sources)  # never the train or test rows


def test_deterministic_for_a_seed(built, aid, landscape, tmp_path):
    again = tmp_path / "again"
    _build(again, aid, landscape)
    for name in ("regions.geojson", "queries.jsonl", "bench.json"):
        assert (again / name).read_text() == (built / name).read_text()
    assert np.array_equal(_mosaic(again)[0], _mosaic(built)[0])
    other = tmp_path / "other"
    _build(other, aid, landscape, seed=5)
    assert (other / "regions.geojson").read_text() != (built / "regions.geojson").read_text()


def test_a_coarse_uint16_grey_background_is_stretched(aid, tmp_path):
    path = tmp_path / "grey16.tif"
    grad = (np.add.outer(np.arange(30), np.arange(30)) * 100 + 1000).astype(np.uint16)
    with rasterio.open(
        path, "w", driver="GTiff", width=30, height=30, count=1, dtype="uint16", crs="EPSG:32618",
        transform=from_origin(300_000, 4_100_000, 10.0, 10.0),
    ) as dst:  # fmt: skip
        dst.write(grad, 1)
    summary = _build(tmp_path / "b", aid, path)
    img, _t, _c, count = _mosaic(tmp_path / "b")
    assert count == 3 and img.dtype == np.uint8 and list(img.shape[1:][::-1]) == summary["mosaic_px"]
    assert img.max() == 255 and (img[0] == img[1]).mean() > 0.5  # grey where there is no chip


def test_missing_background_sources(aid, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="background raster .* not found"):
        _build(tmp_path / "a", aid, tmp_path / "nope.tif")
    (tmp_path / "not-a-raster.tif").write_text("hello")
    with pytest.raises(InputError, match="not a readable raster"):
        _build(tmp_path / "a", aid, tmp_path / "not-a-raster.tif")
    monkeypatch.setattr(aid_bench, "NAIP_DIR", tmp_path / "no-naip")
    with pytest.raises(InputError, match="NAIP background not found"):
        _build(tmp_path / "a", aid, "naip")
    assert not (tmp_path / "a").exists()


def test_cli_background_flag(aid, landscape, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["bench", "aid-mosaic", "--split", "dev", str(out), "--data", str(aid), "--leave-out", "Airport"]
    assert main([*args, "--background", str(tmp_path / "missing.tif")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geosearch: error:") and "\n" not in err and "missing.tif" in err
    assert not out.exists()
    assert main([*args, "--gap", "10"]) == 2  # --gap only with --background
    capsys.readouterr()
    assert main([*args, "--background", str(landscape), "--gap", "16", "--name", "aid-dev-landscape"]) == 0
    meta = json.loads((out / "bench.json").read_text())
    assert meta["name"] == "aid-dev-landscape" and meta["gap_px"] == 16
