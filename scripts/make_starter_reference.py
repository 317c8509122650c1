"""Write tests/fixtures/starter_reference.json: embeddings of fixed inputs under the shipped starter model.

Run after (re)training the starter model:  python scripts/make_starter_reference.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from geosearch.models.starter import reference_image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "starter_reference.json"
TEXT = "an aerial image of a harbour"
N_DIMS = 16


def main() -> None:
    from geosearch.checksums import sha256_file
    from geosearch.models import get_model
    from geosearch.models.starter import WEIGHTS_PATH

    model = get_model("geosearch-starter", device="cpu")
    img = model.encode_images(reference_image()[None])[0]
    txt = model.encode_text([TEXT])[0]
    ref = {
        "model_id": model.model_id,
        "weights_sha256": sha256_file(WEIGHTS_PATH),
        "text": TEXT,
        "image_first": [round(float(v), 6) for v in img[:N_DIMS]],
        "text_first": [round(float(v), 6) for v in txt[:N_DIMS]],
        "cosine": round(float(img @ txt), 6),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(ref, indent=2) + "\n")
    print(json.dumps(ref, indent=2))


if __name__ == "__main__":
    main()
