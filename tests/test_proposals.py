"""Region proposals that follow image boundaries (geosearch.proposals), stored by the index and
ranked over the whole mosaic by the answering chain (geosearch.refine.proposed)."""

from __future__ import annotations

import numpy as np
import pytest
from bench_fixtures import write_rgb
from shapely.geometry import box

from geosearch.chain import answer
from geosearch.geo import WGS84, reproject_geom
from geosearch.index import TileIndex, build_index
from geosearch.mosaic import open_mosaic
from geosearch.pipeline import MethodContext
from geosearch.proposals import hierarchical_grouping, propose_mosaic
from geosearch.refine.testing import colour_model
from geosearch.settings import Settings

RES = 2.0
ORIGIN = (500_000.0, 4_000_000.0)


def _write(path, img: np.ndarray) -> None:
    write_rgb(path, img, ORIGIN, RES)


def _bounds(c0: int, r0: int, c1: int, r1: int) -> tuple:
    return (ORIGIN[0] + c0 * RES, ORIGIN[1] - r1 * RES, ORIGIN[0] + c1 * RES, ORIGIN[1] - r0 * RES)


def _index(tmp_path, img: np.ndarray) -> TileIndex:
    _write(tmp_path / "scene.tif", img)
    model = colour_model(32)
    settings = Settings(scales_m=[128.0, 256.0], overlap=0.5, batch_size=64)
    build_index(
        [tmp_path / "scene.tif"], tmp_path / "scene.duckdb", model=model, settings=settings, progress=False
    )
    index = TileIndex.open(tmp_path / "scene.duckdb")
    index.attach_model(model)
    return index


def _iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


def _ask(index: TileIndex, text: str, k: int = 10):
    ans = answer(index, text, k, MethodContext(options={"abstain_threshold": 0.0}))
    return [reproject_geom(r.polygon_wgs84, WGS84, index.crs) for r in ans.regions]


@pytest.fixture(scope="module")
def two_fields(tmp_path_factory):
    """A 400 x 300 px (800 x 600 m) scene: a reddish field of fine stripes beside a bluish field of
    coarse noise (300 m squares), each on its own side of one straight boundary, in a grey margin."""
    rng = np.random.default_rng(1)
    img = np.zeros((3, 300, 400), np.uint8)
    img[:] = rng.integers(110, 130, (3, 300, 400))
    a, b = (50, 75, 200, 225), (200, 75, 350, 225)  # (c0, r0, c1, r1)
    rows = np.arange(a[1], a[3])[:, None]
    stripes = ((rows // 3) % 2).astype(int) * 40
    img[0, a[1] : a[3], a[0] : a[2]] = 180 + stripes
    img[1, a[1] : a[3], a[0] : a[2]] = 60 + stripes // 2
    img[2, a[1] : a[3], a[0] : a[2]] = 50
    coarse = np.kron(rng.integers(0, 60, (19, 19)), np.ones((8, 8), int))[: b[3] - b[1], : b[2] - b[0]]
    img[0, b[1] : b[3], b[0] : b[2]] = 40
    img[1, b[1] : b[3], b[0] : b[2]] = 70 + coarse // 2
    img[2, b[1] : b[3], b[0] : b[2]] = 170 + coarse
    tmp = tmp_path_factory.mktemp("fields")
    return _index(tmp, img), box(*_bounds(*a)), box(*_bounds(*b))


def test_grouping_reports_every_level():
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = labels * 60
    regions = hierarchical_grouping(img, labels)
    assert len(regions) == 4 + 3  # four superpixels, three merges up to the whole image
    assert max(r["level"] for r in regions) >= 2
    assert any(r["members"] == frozenset({0, 1, 2, 3}) and r["bbox"] == (0, 0, 4, 4) for r in regions)
    # a region that outgrows max_side_px is reported and merges no further
    capped = hierarchical_grouping(img, labels, max_side_px=3)
    assert not any(len(r["members"]) == 4 for r in capped)


def test_two_adjacent_fields_come_back_as_two_regions(two_fields):
    index, field_a, field_b = two_fields
    ps = index.proposals()
    assert ps is not None and len(ps) > 2
    assert index.info()["proposals"]["proposals"]["status"] == "complete"
    # each field is one proposal, following its boundary
    props = [box(*b) for b in ps.bounds]
    assert max(_iou(p, field_a) for p in props) >= 0.8
    assert max(_iou(p, field_b) for p in props) >= 0.8
    # and the chain answers each field with that field, not the two together
    red = _ask(index, "red")
    blue = _ask(index, "blue")
    assert _iou(red[0], field_a) >= 0.8, _iou(red[0], field_a)
    assert _iou(blue[0], field_b) >= 0.8, _iou(blue[0], field_b)


@pytest.fixture(scope="module")
def ten_copies(tmp_path_factory):
    """Ten red squares (60 m) scattered on a green field."""
    rng = np.random.default_rng(3)
    img = np.zeros((3, 500, 500), np.uint8)
    img[0], img[1], img[2] = 60, 150, 60
    img = np.clip(img.astype(int) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
    squares = []
    for r in range(2):
        for c in range(5):
            c0, r0 = 30 + c * 95, 60 + r * 220 + (c % 2) * 40
            img[0, r0 : r0 + 30, c0 : c0 + 30] = 210
            img[1, r0 : r0 + 30, c0 : c0 + 30] = 50
            img[2, r0 : r0 + 30, c0 : c0 + 30] = 40
            squares.append(box(*_bounds(c0, r0, c0 + 30, r0 + 30)))
    return _index(tmp_path_factory.mktemp("copies"), img), squares


def _copies_found(regions, squares) -> set[int]:
    return {
        max(range(len(squares)), key=lambda i: _iou(g, squares[i]))
        for g in regions
        if max(_iou(g, s) for s in squares) >= 0.5
    }


def test_ten_copies_come_back_as_separate_regions(ten_copies):
    """The top 10 hold at least nine of the ten squares, each its own region (one per thing)."""
    index, squares = ten_copies
    found = _copies_found(_ask(index, "red", 10), squares)
    assert len(found) >= 9, found


def test_find_all_returns_every_instance_above_the_threshold(ten_copies, monkeypatch):
    """ "all the red squares" asks for every instance: k is lifted, and every region whose
    calibrated confidence passes the abstention threshold is returned, ranked; nothing else."""
    from geosearch.refine import calibrate

    index, squares = ten_copies
    params = {"features": ["z_index"], "coef": [1.0], "intercept": -2.0, "threshold": 0.5, "calibrated": True}
    monkeypatch.setattr(calibrate, "load_calibration", lambda *a, **k: params)
    ans = answer(index, "all the red squares", 3, MethodContext())
    assert not ans.abstained and ans.details["find_all"] == len(ans.regions)
    regions = [reproject_geom(r.polygon_wgs84, WGS84, index.crs) for r in ans.regions]
    assert len(_copies_found(regions, squares)) >= 9  # more than the k of 3 that was asked
    assert all(r.confidence >= 0.5 for r in ans.regions)
    assert all(max(_iou(g, s) for s in squares) > 0.3 for g in regions), "a region that is no square"
    scores = [r.score for r in ans.regions]
    assert scores == sorted(scores, reverse=True)
    # the same words without "all": the k asked
    assert len(answer(index, "red squares", 3, MethodContext()).regions) <= 3


def test_proposals_follow_outlines_and_resume(tmp_path):
    """An L-shaped red field comes back with an outline that follows the L (not its box), and a
    rebuild with the proposals already stored embeds nothing again."""
    img = np.zeros((3, 400, 400), np.uint8)
    img[0], img[1], img[2] = 60, 150, 60
    img[0, 80:320, 80:160] = 220
    img[0, 240:320, 80:320] = 220
    img[1:, 80:320, 80:160] = 40
    img[1:, 240:320, 80:320] = 40
    _write(tmp_path / "l.tif", img)
    props = propose_mosaic(open_mosaic([tmp_path / "l.tif"]))
    ell = box(*_bounds(80, 80, 160, 320)).union(box(*_bounds(80, 240, 320, 320)))
    best = max(props, key=lambda p: _iou(p.polygon, ell))
    assert _iou(best.polygon, ell) >= 0.8
    assert _iou(box(*best.bounds), ell) < 0.6  # the outline, not the box, is what fits
    model = colour_model(32)
    settings = Settings(scales_m=[128.0], overlap=0.5)
    build_index([tmp_path / "l.tif"], tmp_path / "l.duckdb", model=model, settings=settings, progress=False)
    calls = []
    orig = model.encode_images
    model.encode_images = lambda x: calls.append(len(x)) or orig(x)
    build_index([tmp_path / "l.tif"], tmp_path / "l.duckdb", model=model, settings=settings, progress=False)
    assert calls == []
    off = Settings(scales_m=[128.0], overlap=0.5, proposals=False)
    build_index([tmp_path / "l.tif"], tmp_path / "plain.duckdb", model=model, settings=off, progress=False)
    plain = TileIndex.open(tmp_path / "plain.duckdb")
    assert plain.proposals() is None  # the chain then refines the pyramid's windows instead


@pytest.mark.parametrize("spare", [True, False])
def test_segmentation_overlaps_the_tiles_and_stops_when_the_build_fails(tmp_path, monkeypatch, spare):
    """With cores to spare beside the tower, the proposals are segmented in a thread while the
    tiles are embedded: the segmentation starts before the first tile batch is written, and a
    build that fails stops it (it sees its cancel event) instead of leaving it running. Without
    (index.spare_cores), it runs after the tiles: a build failing on its tiles never starts it."""
    import threading

    import geosearch.index as index_mod
    import geosearch.proposals as proposals_mod

    img = np.zeros((3, 400, 400), np.uint8)
    img[0], img[1], img[2] = 60, 150, 60
    _write(tmp_path / "f.tif", img)
    events: list[str] = []
    cancelled = threading.Event()

    def slow_propose(mosaic, ps=None, cancel=None):
        events.append("segmentation started")
        if cancel is not None and cancel.wait(30):
            cancelled.set()
        return []

    def failing_insert(*args, **kwargs):
        events.append("tiles written")
        raise OSError("disk full (test)")

    monkeypatch.setattr(proposals_mod, "propose_mosaic", slow_propose)
    monkeypatch.setattr(index_mod, "_insert_tiles", failing_insert)
    monkeypatch.setattr(index_mod, "spare_cores", lambda model: spare)
    settings = Settings(scales_m=[128.0], overlap=0.5)
    with pytest.raises(OSError, match="disk full"):
        build_index(
            [tmp_path / "f.tif"],
            tmp_path / "f.duckdb",
            model=colour_model(32),
            settings=settings,
            progress=False,
        )
    if not spare:
        assert events == ["tiles written"]
        return
    assert events[0] == "segmentation started"
    assert cancelled.is_set()  # and build_index returned only after the thread had stopped


def test_one_per_thing_drops_overlaps_and_pieces():
    from geosearch.refine.proposed import one_per_thing

    boxes = np.array(
        [
            [0, 0, 100, 100],  # the thing
            [5, 5, 100, 100],  # the same thing again (IoU 0.9)
            [10, 10, 50, 50],  # a piece of it (wholly inside)
            [200, 0, 300, 100],  # another thing
            [0, 0, 300, 100],  # both things together: holds them, is not inside either
        ],
        float,
    )
    assert one_per_thing(boxes, 0.5, 1.01) == [0, 2, 3, 4]  # IoU alone keeps the piece
    assert one_per_thing(boxes, 0.5, 0.6) == [0, 3, 4]


def test_lower_regions_lose_confidence_at_the_calibrations_own_rate():
    from geosearch.refine import calibrate

    fitted = {"features": ["d_ref"], "coef": [50.0], "intercept": 0.0, "threshold": 0.5}
    assert calibrate.region_slope(fitted) == 50.0
    assert calibrate.region_slope({"features": ["z_index"], "coef": [2.0]}) == calibrate.REGION_SLOPE
    # a slope fitted for "find all" answers wins over the d_ref coefficient
    assert calibrate.region_slope({**fitted, "region_slope": 70.0}) == 70.0


def test_find_all_slope_trades_recall_for_precision():
    """tune.find_all_quality: a gentle slope returns more regions (every instance, and the wrong
    ones after them), a steep one only the best; queries under the threshold return nothing."""
    from geosearch.refine import tune

    rows = [
        {  # three instances: ranks 1, 2 and 4 hit them, 3 and 5 hit nothing
            "answerable": True,
            "n_relevant": 3,
            "confidence": 0.9,
            "scores": [0.30, 0.29, 0.28, 0.20, 0.10],
            "truth": ["a", "b", None, "c", None],
        },
        {"answerable": True, "n_relevant": 1, "confidence": 0.2, "scores": [0.3], "truth": ["x"]},
    ]
    steep = tune.find_all_quality(rows, 0.5, 300.0)
    gentle = tune.find_all_quality(rows, 0.5, 5.0)
    mid = tune.find_all_quality(rows, 0.5, 20.0)
    assert steep["returned"] == 1 and steep["precision"] == 1.0 and steep["recall"] == pytest.approx(1 / 3)
    assert gentle["returned"] == 5 and gentle["recall"] == 1.0 and gentle["precision"] == pytest.approx(0.6)
    assert mid["returned"] == 4 and mid["recall"] == 1.0 and mid["f1"] > max(steep["f1"], gentle["f1"])


def test_concurrent_first_queries_load_the_proposals_once(ten_copies, monkeypatch):
    """A server's first queries race: the proposals are read from the index once, by one
    connection, and every caller gets the same set."""
    from concurrent.futures import ThreadPoolExecutor

    from geosearch import db

    index, _ = ten_copies
    fresh = TileIndex.open(index.path)
    calls = []
    real = db.connect

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(db, "connect", counting)
    with ThreadPoolExecutor(8) as pool:
        sets = list(pool.map(lambda _: fresh.proposals(), range(16)))
    assert len(calls) == 1 and all(s is sets[0] for s in sets) and len(sets[0]) > 0
