import numpy as np
import pytest
import torch

from geosearch.errors import GeoSearchError, WeightsMissingError
from geosearch.models import get_model, model_specs, weights_present
from geosearch.settings import Settings


def test_presets_listed_and_missing_weights_named(tmp_path):
    names = {s.name for s in model_specs()}
    assert {
        "remoteclip-rn50",
        "remoteclip-vit-b-32",
        "remoteclip-vit-l-14",
        "georsclip-vit-b-32",
        "geosearch-starter",
        "geosearch-tiny",
    } <= names
    s = Settings(models_dir=tmp_path, offline=True)
    assert not weights_present("remoteclip-vit-b-32", s)
    with pytest.raises(WeightsMissingError, match="RemoteCLIP-ViT-B-32.pt"):
        get_model("remoteclip-vit-b-32", settings=s)


def test_unknown_model_and_missing_checkpoint(tmp_path):
    with pytest.raises(GeoSearchError, match="unknown model"):
        get_model("no-such-model")
    with pytest.raises(WeightsMissingError, match="not found"):
        get_model(f"ViT-B-32:{tmp_path / 'missing.pt'}")


def test_any_arch_plus_checkpoint(tmp_path):
    tiny = get_model("geosearch-tiny")
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), ckpt)
    loaded = get_model(f"geosearch-tiny:{ckpt}")
    assert loaded.model_id.startswith("geosearch-tiny@") and loaded.model_id != tiny.model_id
    img = np.random.default_rng(0).integers(0, 255, (2, 70, 90, 3), dtype=np.uint8)
    assert np.allclose(loaded.encode_images(img), tiny.encode_images(img), atol=1e-5)
    assert np.allclose(loaded.encode_text(["a port"]), tiny.encode_text(["a port"]), atol=1e-5)
    bad = tmp_path / "bad.pt"
    torch.save({"foo": torch.zeros(3)}, bad)
    with pytest.raises(GeoSearchError, match="does not fit"):
        get_model(f"geosearch-tiny:{bad}")


def test_a_missing_preset_fails_fast_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    """Online mode but no network: one quick connect, then the clear message (not ~30 s of hub
    retries). The hub endpoint is pointed at a closed port on 127.0.0.1, so nothing leaves the machine."""
    import huggingface_hub

    from geosearch.models.registry import get_weight

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    called = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: called.append(a))
    with pytest.raises(WeightsMissingError, match="not reachable"):
        get_weight("remoteclip-vit-b-32", Settings(offline=False, models_dir=tmp_path))
    assert not called  # the hub client (and its retries) was never started


def test_views_average_rotations_and_name_the_model():
    from geosearch.models.model_id import base_model_id, view_model_id, views_of

    one = get_model("geosearch-tiny", views=1)
    four = get_model("geosearch-tiny", views=4)
    eight = get_model("geosearch-tiny", settings=Settings(image_views=8))
    assert one.model_id == "geosearch-tiny@random-seed0"
    assert four.model_id == "geosearch-tiny@random-seed0+views4" and four.views == 4
    assert eight.model_id.endswith("+views8")
    assert views_of(four.model_id) == 4 and views_of(one.model_id) == 1
    assert base_model_id(eight.model_id) == one.model_id == view_model_id(four.model_id, 1)
    img = np.random.default_rng(1).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    turned = np.ascontiguousarray(np.rot90(img, 1, axes=(1, 2)))
    mirrored = np.ascontiguousarray(img[:, :, ::-1])
    # one view sees a turned scene as another image; four views see the same scene
    assert not np.allclose(one.encode_images(img), one.encode_images(turned), atol=1e-3)
    assert np.allclose(four.encode_images(img), four.encode_images(turned), atol=1e-5)
    assert not np.allclose(four.encode_images(img), four.encode_images(mirrored), atol=1e-3)
    assert np.allclose(eight.encode_images(img), eight.encode_images(mirrored), atol=1e-5)
    assert np.allclose(np.linalg.norm(four.encode_images(img), axis=1), 1, atol=1e-5)


def test_bad_view_counts_are_refused():
    from pydantic import ValidationError

    with pytest.raises(GeoSearchError, match="image views must be one of 1, 2, 4, 8"):
        get_model("geosearch-tiny", views=3)
    with pytest.raises(ValidationError, match="0, 1, 2, 4 or 8"):
        Settings(image_views=3)


def test_views_come_from_the_environment(monkeypatch):
    # environment values are strings: "4" is four views, "3" and "four" are refused by name
    from pydantic import ValidationError

    monkeypatch.setenv("GEOSEARCH_IMAGE_VIEWS", "4")
    assert Settings().image_views == 4
    assert get_model("geosearch-tiny", settings=Settings()).model_id.endswith("+views4")
    for bad in ("3", "four"):
        monkeypatch.setenv("GEOSEARCH_IMAGE_VIEWS", bad)
        with pytest.raises(ValidationError, match="image_views"):
            Settings()


def test_views_are_opt_in():
    # four views lift the ranking but cost answers after abstention (MODEL_CARD.md): one by default
    from geosearch.models.registry import _REGISTRY, _ensure_builtin

    _ensure_builtin()
    assert {spec.views for spec in _REGISTRY.values()} == {1}
    assert get_model("geosearch-tiny").views == 1 and Settings().image_views == 0


def test_a_fit_for_other_embeddings_is_not_used(tmp_path):
    import json

    from geosearch.refine.calibrate import load_calibration

    path = tmp_path / "calibration.json"
    entry = {"model": "m", "model_id": "m@abc", "features": ["g_above"], "coef": [1.0], "intercept": 0.0}
    path.write_text(json.dumps({"models": {"m": entry}}))
    assert load_calibration("m", path, model_id="m@abc")["calibrated"]
    assert load_calibration("m", path)["calibrated"]  # no id to compare: the name decides
    assert not load_calibration("m", path, model_id="m@abc+views4")["calibrated"]
