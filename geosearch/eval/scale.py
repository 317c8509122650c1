"""Synthetic indexes in the real on-disk format, for the scale benchmark and the ANN tests.

Real tile embeddings are clustered (land cover repeats), vary continuously between clusters and
share a common "image" direction; text queries sit away from the images, so their top-10 scores
are tightly packed, which is what makes approximate search hard. The vectors here imitate that:
unit vectors around cluster centres, plus a low-rank continuous component shared across clusters
(so neighbours spread over many IVF lists) and a shared offset; queries mix two centres with a
different offset. Tuned to be hard: at 10^5 tiles an IVF of 512 lists needs 64 probes for
recall@10 0.985, where well-separated clusters need 4.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

SCALES = (128.0, 256.0, 512.0, 1024.0)
CRS = "EPSG:32633"


class SyntheticVectors:
    """Deterministic clustered unit vectors, generated in chunks (10^7 x 384 never in memory)."""

    def __init__(
        self, dim: int = 384, clusters: int = 256, seed: int = 0, rank: int = 16, spread: float = 1.25
    ):
        rng = np.random.default_rng(seed)
        self.dim, self.seed, self.spread = dim, seed, spread
        self.centres = _unit(rng.standard_normal((clusters, dim), dtype=np.float32))
        self.image_dir = _unit(rng.standard_normal(dim, dtype=np.float32))
        self.text_dir = _unit(rng.standard_normal(dim, dtype=np.float32))
        self.basis = _unit(rng.standard_normal((rank, dim), dtype=np.float32))

    def _continuous(self, rng, n: int) -> np.ndarray:
        rank = len(self.basis)
        return self.spread * (rng.standard_normal((n, rank), dtype=np.float32) / np.sqrt(rank)) @ self.basis

    def chunk(self, start: int, stop: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, start])
        n = stop - start
        which = rng.integers(0, len(self.centres), n)
        noise = rng.standard_normal((n, self.dim), dtype=np.float32) * (1.0 / np.sqrt(self.dim))
        return _unit(self.centres[which] + 0.6 * self.image_dir + self._continuous(rng, n) + noise)

    def queries(self, n: int, seed: int = 1) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 10**9 + seed])
        a, b = rng.integers(0, len(self.centres), (2, n))
        noise = rng.standard_normal((n, self.dim), dtype=np.float32) * (1.0 / np.sqrt(self.dim))
        return _unit(
            self.centres[a] + self.centres[b] + 0.8 * self.text_dir + self._continuous(rng, n) + noise
        )


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def write_synthetic_index(
    path: str | Path,
    n: int,
    *,
    dim: int = 384,
    dates: list[str] | None = None,
    vectors: SyntheticVectors | None = None,
    chunk: int = 100_000,
) -> SyntheticVectors:
    """Write an index of ``n`` synthetic tiles at ``path`` (DuckDB tables, complete, no vector
    store yet: :func:`geosearch.index.upgrade_index` writes it, as for any index). Tiles take the
    four scales in turn and lie on a grid; with ``dates`` they take the dates in turn too."""
    import pyarrow as pa
    from pyproj import CRS as PCRS

    from geosearch import db
    from geosearch.geo import boxes_to_wgs84
    from geosearch.index import FORMAT_VERSION, SCHEMA, _write_meta

    vectors = vectors or SyntheticVectors(dim=dim)
    path = Path(path)
    side = int(np.ceil(np.sqrt(n)))
    con = db.connect(path)
    try:
        con.execute(SCHEMA)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            i = np.arange(start, stop)
            r, c = np.divmod(i, side)
            scale = np.asarray(SCALES)[i % len(SCALES)]
            x0, y0 = 500_000.0 + c * 128.0, 4_500_000.0 + r * 128.0
            emb = vectors.chunk(start, stop)
            blob = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(4 * dim), len(i), [None, pa.py_buffer(emb.astype("<f4").tobytes())]
            ).cast(pa.binary())
            table = pa.table(
                {
                    "tile_id": pa.array([f"t{v:09d}" for v in i]),
                    "scale_m": scale,
                    "row": r.astype(np.int32),
                    "col": c.astype(np.int32),
                    "x0": x0,
                    "y0": y0,
                    "x1": x0 + scale,
                    "y1": y0 + scale,
                    "valid_fraction": np.ones(len(i)),
                    "date": pa.array(
                        [dates[v % len(dates)] for v in i] if dates else [None] * len(i), pa.string()
                    ),
                    "embedding": blob,
                }
            )
            with db.transaction(con, new_tiles=table):
                con.execute("""INSERT INTO tiles SELECT tile_id, scale_m, "row", col, x0, y0, x1, y1,
                               NULL, NULL, valid_fraction, date, embedding FROM new_tiles""")
        extent = [500_000.0, 4_500_000.0, 500_000.0 + side * 128.0 + 1024, 4_500_000.0 + side * 128.0 + 1024]
        _write_meta(
            con,
            {
                "format_version": FORMAT_VERSION,
                "model_name": "synthetic",
                "model_id": f"synthetic-{dim}d",
                "mosaic_fingerprint": "synthetic",
                "mosaic": {"bounds": extent, "files": [], "crs": CRS},
                "tiling": {"scales_m": list(SCALES)},
                "crs": PCRS.from_user_input(CRS).to_wkt(),
                "bounds_wgs84": list(boxes_to_wgs84(np.array([extent]), CRS)[0].bounds),
                "status": "complete",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "date": dates[0] if dates else None,
                "dates": sorted(dates or []),
                "tiles_embedded": n,
            },
        )
        if dates:
            for d in dates:
                con.execute("INSERT INTO mosaics VALUES (?, ?, ?, ?)", [d, "[]", "synthetic", json.dumps({})])
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return vectors
