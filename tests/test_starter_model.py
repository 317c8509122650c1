"""The shipped starter model loads offline, matches its model card and a stored reference embedding."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from geosearch.models.starter import reference_image

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "fixtures" / "starter_reference.json"
CARD = REPO / "geosearch" / "models" / "weights" / "MODEL_CARD.md"


@pytest.fixture(scope="module")
def starter():
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from geosearch.models import get_model

    return get_model("geosearch-starter", device="cpu")


def test_starter_is_default_and_present():
    from geosearch.models import default_model_name, model_specs, weights_present
    from geosearch.models.starter import WEIGHTS_PATH

    assert default_model_name() == "geosearch-starter"
    names = {s.name for s in model_specs()}
    assert {"geosearch-starter", "geosearch-tiny", "remoteclip-vit-b-32", "georsclip-vit-b-32"} <= names
    assert weights_present("geosearch-starter")
    assert WEIGHTS_PATH.stat().st_size <= 15 * 1024 * 1024


def test_weights_sha256_matches_model_card(starter):
    from geosearch.checksums import sha256_file
    from geosearch.models.starter import WEIGHTS_PATH

    digest = sha256_file(WEIGHTS_PATH)
    card = re.findall(r"\b[0-9a-f]{64}\b", CARD.read_text())
    assert digest in card
    assert starter.model_id == f"geosearch-starter@{digest[:16]}"


def test_embeddings_match_reference(starter):
    ref = json.loads(REFERENCE.read_text())
    img = starter.encode_images(reference_image()[None])[0]
    txt = starter.encode_text([ref["text"]])[0]
    n = len(ref["image_first"])
    assert np.allclose(img[:n], ref["image_first"], atol=1e-3)
    assert np.allclose(txt[:n], ref["text_first"], atol=1e-3)
    assert abs(float(img @ txt) - ref["cosine"]) < 1e-3
    assert img.shape == txt.shape == (384,)


def test_text_tower_checksum_is_enforced(monkeypatch):
    from geosearch.errors import GeoSearchError
    from geosearch.models import starter as st

    st.text_tower_dir.cache_clear()
    monkeypatch.setattr(st, "MINILM_SHA256", "0" * 64)
    try:
        with pytest.raises(GeoSearchError, match="sha256"):
            st.text_tower_dir()
    finally:
        st.text_tower_dir.cache_clear()


def test_models_list_cli(capsys):
    from geosearch_server.cli import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "geosearch-starter" in out and "present" in out and "remoteclip-vit-b-32" in out


def test_plain_torch_towers_equal_the_open_clip_model(starter):
    """Inference builds the starter in plain torch (geosearch.models.starter_net); training builds it
    with open_clip. Same weights, same operations: the same tokens and bit-for-bit the same
    embeddings, for single texts, padded batches and images."""
    import torch
    from open_clip.tokenizer import HFTokenizer

    from geosearch.models import starter as st
    from geosearch.models.starter_net import StarterNet, build_fast_tokenizer

    assert isinstance(starter.model, StarterNet)
    ref, cfg = st.load_clip(st.WEIGHTS_PATH)
    texts = [
        "an aerial image of a stadium",
        "Farmland NEAR water, with   spaces\tand\nnewlines",
        "Café naïve résumé &amp; &lt;html&gt; mojibake Ã©tÃ©",
        "a [SEP] b [CLS] [MASK] [UNK]",
        "  plain ASCII, 'quoted' \"twice\" -- a/b (c) 50% off?!  ",  # the path without ftfy
        "fish & chips &amp; more",
        "中文 字符 emoji 🚀 ﬁ ligature 1,234.5 km²",
        "",
        " ".join(["storage tanks next to a parking lot"] * 30),  # truncated at 64 tokens
        "x" * 300,
    ]
    hf = HFTokenizer(str(st.text_tower_dir()), context_length=int(cfg["text_cfg"]["context_length"]))
    fast = build_fast_tokenizer(st.text_tower_dir(), int(cfg["text_cfg"]["context_length"]))
    assert torch.equal(hf(texts), fast(texts))
    with torch.inference_mode():
        for batch in ([texts[0]], texts[:2], texts):
            tokens = starter.tokenizer(batch)
            assert torch.equal(tokens, st.build_tokenizer(cfg)(batch))
            assert torch.equal(ref.encode_text(tokens), starter.model.encode_text(tokens))
        images = torch.randn(5, 3, 80, 80, generator=torch.Generator().manual_seed(0))
        assert torch.equal(ref.encode_image(images), starter.model.encode_image(images))
    assert float(ref.logit_scale.detach()) == float(starter.model.logit_scale)


def test_loading_the_starter_imports_no_open_clip():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from geosearch.models import get_model\n"
        "m = get_model('geosearch-starter', device='cpu')\n"
        "m.encode_text(['a lake']); m.encode_images(__import__('numpy').zeros((1, 80, 80, 3), 'uint8'))\n"
        "print(sorted(x for x in ('open_clip', 'timm', 'transformers', 'torchvision', 'torch._dynamo')"
        " if x in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
