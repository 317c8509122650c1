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
