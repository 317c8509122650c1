"""The starter's text tower in numpy (geosearch.models.text): the same vectors as the torch towers,
and a starter index searched without importing torch."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from geosearch.models.text import MINILM_SHA256, _erf, starter_text, verified_minilm_dir
from tests.fixtures.rasters import write_raster

TEXTS = [
    "an aerial image of a stadium",
    "Farmland NEAR water, with   spaces\tand\nnewlines",
    "Café naïve résumé &amp; &lt;html&gt; mojibake Ã©tÃ©",
    "a [SEP] b [CLS] [MASK] [UNK]",
    "中文 字符 emoji 🚀 ﬁ ligature 1,234.5 km²",
    "",
    " ".join(["storage tanks next to a parking lot"] * 30),  # truncated at the context length
]


@pytest.fixture(scope="module")
def starter():
    from geosearch.models import get_model

    return get_model("geosearch-starter", device="cpu")


def test_erf_is_accurate():
    import math

    x = np.linspace(-7, 7, 20001)
    assert np.abs(_erf(x) - np.array([math.erf(v) for v in x])).max() < 5e-7  # float32


def test_numpy_text_tower_matches_the_torch_towers(starter):
    light = starter_text(starter.model_id)
    assert light is not None and light.model_id == starter.model_id
    got = light.encode_text(TEXTS)
    ref = starter.encode_text(TEXTS)  # the plain-torch tower (bit-for-bit open_clip's, test_starter_model)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 2e-6
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    # a padded batch gives each text what it gets alone
    alone = np.concatenate([light.cache.features([t]) for t in TEXTS])  # uncached, one at a time
    alone /= np.linalg.norm(alone, axis=1, keepdims=True)
    assert np.abs(alone - got).max() < 1e-6
    name, _, digest = starter.model_id.rpartition("@")
    assert starter_text(f"{name}@{'0' * 16}") is None  # other weights under the same name
    assert starter_text(f"geosearch-tiny@{digest}") is None  # another model
    assert verified_minilm_dir(MINILM_SHA256).is_dir()


def test_a_starter_index_is_searched_without_torch(tmp_path, starter):
    from geosearch.index import TileIndex, build_index
    from geosearch.search import search
    from geosearch.settings import Settings

    raster = write_raster(tmp_path / "m.tif", width=192, height=192, res=(2.0, 2.0))
    settings = Settings(scales_m=[128.0, 256.0], overlap=0.5, proposals=False)
    build_index([raster], tmp_path / "s.duckdb", model=starter, settings=settings, progress=False)
    code = textwrap.dedent(
        f"""
        import json, sys
        from geosearch.index import TileIndex
        from geosearch.search import search
        hits = search(TileIndex.open({str(tmp_path / "s.duckdb")!r}), "a bright square", 5)
        print(json.dumps({{"torch": "torch" in sys.modules,
                           "hits": [[h.tile_id, h.score] for h in hits]}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    light = json.loads(out.stdout.strip().splitlines()[-1])
    assert light["torch"] is False  # the query was embedded without torch
    index = TileIndex.open(tmp_path / "s.duckdb")
    index.attach_model(starter)  # the full model: the same ranking and scores
    full = [[h.tile_id, h.score] for h in search(index, "a bright square", 5)]
    assert [h[0] for h in light["hits"]] == [h[0] for h in full]
    assert np.allclose([h[1] for h in light["hits"]], [h[1] for h in full], atol=1e-6)
