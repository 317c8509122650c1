"""Training data: a captioned manifest (JSONL) or a folder of class sub-folders, decoded once."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geosearch.errors import GeoSearchError
from geosearch.fileio import atomic_path

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}

# Class-name prompts: used as extra training captions and for zero-shot classification.
TEMPLATES = (
    "an aerial image of {a} {c}.",
    "a satellite image of {a} {c}.",
    "an aerial photograph of the {c}.",
    "a remote sensing image of {a} {c}.",
    "{a} {c} seen from above.",
    "an overhead view of {a} {c}.",
    "a top-down aerial view of {a} {c}.",
    "{c}",
)


@dataclass
class Record:
    path: Path
    label: str
    captions: list[str] = field(default_factory=list)


@dataclass
class Dataset:
    """Records of one split plus the ordered class names (index = label id)."""

    records: list[Record]
    classes: list[str]

    @property
    def labels(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[r.label] for r in self.records], dtype=np.int64)


def class_phrase(name: str) -> str:
    """Folder/class name to words: ``DenseResidential`` -> ``dense residential``."""
    name = re.sub(r"[_\-]+", " ", name)
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return re.sub(r"\s+", " ", name).strip().lower()


def class_prompts(name: str, templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    c = class_phrase(name)
    a = "an" if c[:1] in "aeiou" else "a"
    return [t.format(a=a, c=c) for t in templates]


def load_source(source: str | Path, split: str | None) -> Dataset:
    """Load ``split`` of a manifest (``*.jsonl``) or a class-folder tree (``split`` = sub-folder if present)."""
    source = Path(source)
    if source.is_file():
        return _load_manifest(source, split)
    if source.is_dir():
        if (source / "manifest.jsonl").is_file():
            return _load_manifest(source / "manifest.jsonl", split)
        return _load_folder(source, split)
    raise GeoSearchError(f"training data not found: {source}")


def _load_manifest(path: Path, split: str | None) -> Dataset:
    records, classes = [], set()
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            classes.add(row["class"])
            if split and row.get("split") != split:
                continue
            records.append(Record(path.parent / row["path"], row["class"], list(row.get("captions") or [])))
    if not records:
        raise GeoSearchError(f"no records with split={split!r} in {path}")
    return Dataset(records, sorted(classes))


def _load_folder(root: Path, split: str | None) -> Dataset:
    base = root / split if split and (root / split).is_dir() else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    records = [
        Record(f, c) for c in classes for f in sorted((base / c).iterdir()) if f.suffix.lower() in IMAGE_EXTS
    ]
    if not records:
        raise GeoSearchError(f"no images in class folders under {base}")
    return Dataset(records, classes)


def decode_images(
    records: list[Record], size: int, cache_dir: Path | None = None, workers: int = 2
) -> np.ndarray:
    """All images as one uint8 (N, size, size, 3) array (antialiased resize), cached as ``.npy``."""
    key = hashlib.sha256((f"{size}|" + "|".join(str(r.path) for r in records)).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"images_{size}_{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache)
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def one(rec: Record) -> np.ndarray:
        with Image.open(rec.path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
            return np.asarray(im, dtype=np.uint8)

    out = np.empty((len(records), size, size, 3), np.uint8)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, arr in enumerate(pool.map(one, records)):
            out[i] = arr
    if cache is not None:
        with atomic_path(cache, suffix=".npy") as tmp:
            np.save(tmp, out)
    return out
