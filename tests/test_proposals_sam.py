"""The SAM proposal backend (geosearch.proposals, backend "sam"): runs when a SAM-family checkpoint
in Hugging Face format is on disk, and is refused in one line, before any work, when it is not.

No download: the checkpoint is a tiny, randomly initialised SAM saved into the test's folder.
Random weights give random masks, so the proposals are checked for their form only."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import shapely
from bench_fixtures import write_rgb
from shapely.geometry import box

from geosearch.errors import InputError
from geosearch.geo import box_ious
from geosearch.index import TileIndex, build_index
from geosearch.mosaic import open_mosaic
from geosearch.proposals import SAM_LEVEL, ProposalSettings, available_backends, propose_mosaic
from geosearch.refine.testing import colour_model
from geosearch.settings import Settings, get_settings
from geosearch_server.cli import main

RES = 2.0
ORIGIN = (500_000.0, 4_000_000.0)
SIDE = 64  # the tiny model's input side


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised SAM small enough to run in milliseconds, saved with its processor."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    config = SamConfig(
        vision_config=dict(
            hidden_size=32,
            output_channels=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=SIDE,
            patch_size=8,
            window_size=4,
            global_attn_indexes=[0],
            num_pos_feats=16,
            mlp_dim=64,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=SIDE, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=32,
            mlp_dim=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            iou_head_hidden_dim=32,
            iou_head_depth=2,
        ),
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "tiny-sam"
    SamModel(config).eval().save_pretrained(path)
    SamProcessor(
        SamImageProcessor(size={"longest_edge": SIDE}, pad_size={"height": SIDE, "width": SIDE})
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 240 x 240 px (480 m) scene of bright squares on noise, its left 40 columns nodata."""

    rng = np.random.default_rng(7)
    img = rng.integers(20, 90, (3, 240, 240)).astype(np.uint8)
    for _ in range(12):
        r, c, s = rng.integers(0, 200), rng.integers(40, 200), rng.integers(15, 40)
        img[:, r : r + s, c : c + s] = rng.integers(120, 255, (3, 1, 1))
    img[:, :, :40] = 0
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    write_rgb(path, img, ORIGIN, RES, nodata=0)
    return path


def _ps(weights, **kw) -> ProposalSettings:
    """An 8 x 8 point grid, every mask kept (random weights predict IoUs near 0), the smallest
    proposal 24 m (3 m working pixels: the 480 m scene is one block of 160 px)."""
    base = dict(
        backend="sam",
        sam_weights=weights,
        sam_points=8,
        sam_min_iou=-1.0,
        sam_min_stability=0.0,
        min_side_m=24.0,
        device="cpu",
    )
    return ProposalSettings(**{**base, **kw})


def _key(props) -> list:
    return [(p.bounds, shapely.to_wkb(p.polygon), p.level, p.n_segments) for p in props]


def test_sam_proposals_are_well_formed_and_deterministic(weights, scene):
    """The tiny random SAM runs end to end (processor, image embedding, point prompts, masks
    upsampled to the block, outlines); its masks are noise, so only their form is checked."""
    mosaic = open_mosaic([scene])
    ps = _ps(weights)
    props = propose_mosaic(mosaic, ps)
    assert props, "the tiny SAM gave no proposal at all"
    mb = mosaic.bounds
    gsd = 3.0  # working resolution: min_side_m / px_per_min_side
    nodata = box(mb[0], mb[1], mb[0] + 40 * RES - gsd, mb[3])  # less the working pixel astride its edge
    eps = 1e-6
    for p in props:
        x0, y0, x1, y1 = p.bounds
        assert mb[0] - eps <= x0 < x1 <= mb[2] + eps and mb[1] - eps <= y0 < y1 <= mb[3] + eps
        w, h = x1 - x0, y1 - y0
        assert ps.min_side_m - eps <= min(w, h) and max(w, h) <= ps.max_side_m + eps
        assert max(w, h) / min(w, h) <= ps.max_aspect + eps
        assert p.polygon.is_valid and not p.polygon.is_empty
        assert p.polygon.area > 0 and box(*p.bounds).buffer(gsd).contains(p.polygon)
        assert p.polygon.intersection(nodata).area < 1e-6  # masks stop at nodata
        assert p.level == SAM_LEVEL and p.extra["source"] == "sam"
    boxes = np.array([p.bounds for p in props])
    for i in range(1, len(boxes)):
        assert box_ious(boxes[:i], boxes[i]).max() < ps.dedup_iou  # deduplicated
    assert _key(propose_mosaic(mosaic, ps)) == _key(props)  # the same input, the same proposals

    # both backends: SAM masks first, then superpixel groupings, deduplicated together
    both = propose_mosaic(mosaic, _ps(weights, backend="sam+superpixels"))
    levels = [p.level for p in both]
    assert SAM_LEVEL in levels and any(v >= 0 for v in levels)
    assert levels == sorted(levels, key=lambda v: v != SAM_LEVEL)


class OracleSam:
    """Stands in for a trained SAM (same calls, same outputs): the mask a point asks for is the
    connected region, at the model's input resolution, of pixels coloured like the one under it;
    three identical masks per point, each with a predicted IoU of 0.95."""

    dtype = None

    def get_image_embeddings(self, pixel_values):
        return pixel_values

    def __call__(self, image_embeddings, input_points, input_labels, multimask_output=True):
        import torch
        from skimage.measure import label

        img = image_embeddings[0].permute(1, 2, 0).numpy()
        side = img.shape[0]
        masks = []
        for x, y in input_points[0, :, 0].tolist():
            r, c = min(int(y), side - 1), min(int(x), side - 1)
            regions = label(np.abs(img - img[r, c]).max(axis=-1) < 1.0, connectivity=1)
            masks.append(np.where(regions == regions[r, c], 8.0, -8.0))
        logits = torch.tensor(np.stack(masks), dtype=torch.float32)[None, :, None].repeat(1, 1, 3, 1, 1)
        return SimpleNamespace(pred_masks=logits, iou_scores=torch.full(logits.shape[:3], 0.95))


def test_masks_become_proposals_that_follow_them(weights, tmp_path, monkeypatch):
    """With a SAM that segments perfectly, every square of the scene comes back as a proposal
    whose outline is that square, across several overlapping blocks."""
    import torch
    from transformers import SamImageProcessor, SamProcessor

    from geosearch import proposals

    rng = np.random.default_rng(3)
    img = (np.array([70, 120, 60])[:, None, None] + rng.integers(-4, 5, (3, 240, 240))).astype(np.uint8)
    squares = []
    for i, (r0, c0) in enumerate([(r, c) for r in (20, 100, 180) for c in (15, 95, 175)]):
        side = 20 + 2 * i
        img[:, r0 : r0 + side, c0 : c0 + side] = np.array([200, 60 + 15 * i, 40])[:, None, None]
        squares.append(
            box(
                ORIGIN[0] + c0 * RES,
                ORIGIN[1] - (r0 + side) * RES,
                ORIGIN[0] + (c0 + side) * RES,
                ORIGIN[1] - r0 * RES,
            )
        )
    path = tmp_path / "squares.tif"
    write_rgb(path, img, ORIGIN, RES)
    processor = SamProcessor(
        SamImageProcessor(size={"longest_edge": 128}, pad_size={"height": 128, "width": 128})
    )
    monkeypatch.setattr(proposals, "_load_sam", lambda ps: (OracleSam(), processor, torch.device("cpu")))
    ps = _ps(weights, block_px=96, max_side_m=300.0)  # 160 working px: 3 x 3 overlapping blocks
    props = propose_mosaic(open_mosaic([path]), ps)
    assert props and all(p.level == SAM_LEVEL for p in props)
    for sq in squares:
        best = max(props, key=lambda p: _iou(p.polygon, sq))
        assert _iou(best.polygon, sq) >= 0.8, (sq.bounds, _iou(best.polygon, sq))
        assert sum(_iou(box(*p.bounds), sq) > 0.5 for p in props) == 1  # once, not once per block
    assert not any(p.polygon.area > 4 * max(s.area for s in squares) for p in props)  # no background


def _iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


def test_settings_record_the_checkpoint_not_its_path(weights, tmp_path):
    ps = _ps(weights)
    rec = ps.as_dict()
    assert rec["backend"] == "sam" and rec["sam_checkpoint"].startswith("sha256:")
    assert str(weights) not in json.dumps(rec) and "device" not in rec
    moved = shutil.copytree(weights, tmp_path / "elsewhere")
    assert _ps(moved).as_dict() == rec  # the same weights elsewhere: nothing to redo
    # the superpixel default records no SAM field, and a record from before backends matches it
    plain = ProposalSettings()
    assert plain.as_dict()["backend"] == "superpixels" and "sam_points" not in plain.as_dict()
    legacy = {k: v for k, v in plain.as_dict().items() if k != "backend"}
    assert plain.matches(legacy) and plain.matches(None) and not ps.matches(legacy)
    assert available_backends(None) == ["superpixels"]
    assert available_backends(weights) == ["superpixels", "sam", "sam+superpixels"]


def test_index_with_sam_proposals(weights, scene, tmp_path):
    model = colour_model(32)
    settings = Settings(
        scales_m=[128.0],
        overlap=0.5,
        batch_size=64,
        device="cpu",
        proposal_backend="sam",
        sam_weights=weights,
        sam_points_per_side=8,
        sam_min_iou=-1.0,
        sam_min_stability=0.0,
    )
    out = tmp_path / "sam.duckdb"
    build_index([scene], out, model=model, settings=settings, progress=False)
    index = TileIndex.open(out)
    stored = index.proposals()
    assert stored is not None and len(stored) > 0
    assert set(stored.levels.tolist()) == {SAM_LEVEL}
    rec = index.info()["proposals"]["proposals"]
    assert rec["status"] == "complete" and rec["count"] == len(stored)
    assert rec["settings"]["backend"] == "sam" and rec["settings"]["sam_checkpoint"].startswith("sha256:")
    assert str(weights) not in json.dumps(index.meta)
    # resumed with the same settings: nothing is embedded again
    calls = []
    orig = model.encode_images
    model.encode_images = lambda x: calls.append(len(x)) or orig(x)
    build_index([scene], out, model=model, settings=settings, progress=False)
    assert calls == []
    model.encode_images = orig
    # another backend: the proposals are redone with it
    plain = settings.model_copy(update={"proposal_backend": "superpixels"})
    build_index([scene], out, model=model, settings=plain, progress=False)
    index = TileIndex.open(out)
    assert index.info()["proposals"]["proposals"]["settings"]["backend"] == "superpixels"
    assert index.proposals() is not None and (index.proposals().levels >= 0).all()


@pytest.fixture
def fresh_settings(monkeypatch):
    monkeypatch.delenv("GEOSEARCH_SAM_WEIGHTS", raising=False)
    monkeypatch.delenv("GEOSEARCH_PROPOSAL_BACKEND", raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_missing_weights_refused_before_any_work(scene, tmp_path, fresh_settings, capsys):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(InputError, match="SAM weights not found at .*GEOSEARCH_SAM_WEIGHTS"):
        propose_mosaic(open_mosaic([scene]), ProposalSettings(backend="sam", sam_weights=missing))
    with pytest.raises(InputError, match="GEOSEARCH_SAM_WEIGHTS is not set"):
        build_index(
            [scene], tmp_path / "x.duckdb", model=colour_model(8), settings=Settings(proposal_backend="sam")
        )
    assert not (tmp_path / "x.duckdb").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text('{"model_type": "clip"}')
    (empty / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="no SAM checkpoint at"):
        ProposalSettings(backend="sam", sam_weights=empty).as_dict()
    with pytest.raises(InputError, match="unknown proposal backend"):
        propose_mosaic(open_mosaic([scene]), ProposalSettings(backend="mask-rcnn"))

    # the CLI: exit 2, one line, no traceback; from the environment variable and from the flag
    out = tmp_path / "cli.duckdb"
    fresh_settings.setenv("GEOSEARCH_SAM_WEIGHTS", str(missing))
    get_settings.cache_clear()
    for extra in ([], ["--sam-weights", str(missing)]):
        capsys.readouterr()
        rc = main(["index", str(scene), "--out", str(out), "--proposals", "sam", "--quiet", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2
        assert err.count("\n") == 0 and "Traceback" not in err, err
        assert f"SAM weights not found at {missing}: set GEOSEARCH_SAM_WEIGHTS" in err, err
        assert not out.exists()


def test_cli_proposals_flag(fresh_settings):
    from geosearch_server.cli import build_parser
    from geosearch_server.commands.index import settings_from_args

    def settings(*flags):
        return settings_from_args(build_parser().parse_args(["index", "m.tif", "--out", "i.duckdb", *flags]))

    assert settings().proposals and settings().proposal_backend == "superpixels"
    assert not settings("--proposals", "none").proposals
    s = settings("--proposals", "sam+superpixels", "--sam-weights", "/w")
    assert s.proposals and s.proposal_backend == "sam+superpixels" and str(s.sam_weights) == "/w"
