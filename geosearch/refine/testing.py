"""Deterministic fixtures for tests of the refinement engine (no weights, no network).

:func:`colour_model` is an :class:`EmbeddingModel` whose image embedding is a normalised colour
feature (redness, greenness, blueness of the mean pixel, plus a constant) and whose text embedding
maps a few known words onto the matching direction, so that similarities have known answers.
:func:`write_square_raster` writes a GeoTIFF with a red square of known extent on a green field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geosearch.models.base import EmbeddingModel

WORDS: dict[str, list[float]] = {
    "red": [1.0, 0.0, 0.0, 0.0, 0.0],
    "green": [0.0, 1.0, 0.0, 0.0, 0.0],
    "blue": [0.0, 0.0, 1.0, 0.0, 0.0],
    "aerial": [0.3, 0.3, 0.3, 1.0, 0.0],
    "satellite": [0.3, 0.3, 0.3, 1.0, 0.0],
}


class _ColourNet(torch.nn.Module):
    embed_dim = 5

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        red = (r - torch.maximum(g, b)).clamp(min=0).mean(dim=(1, 2))
        green = (g - torch.maximum(r, b)).clamp(min=0).mean(dim=(1, 2))
        blue = (b - torch.maximum(r, g)).clamp(min=0).mean(dim=(1, 2))
        const = torch.full_like(red, 0.15)
        return torch.stack([red, green, blue, const, torch.zeros_like(red)], dim=1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        out = []
        for t in texts:
            vec = np.zeros(5)
            for word, v in WORDS.items():
                if word in t.lower():
                    vec += np.array(v)
            if not vec.any():
                vec[4] = 1.0  # matches no image at all
            out.append(vec)
        return torch.tensor(np.array(out), dtype=torch.float32)


def colour_model(image_size: int = 16) -> EmbeddingModel:
    return EmbeddingModel(
        name="test-colour",
        model_id="test-colour@1",
        model=_ColourNet(),
        tokenizer=lambda texts: list(texts),
        image_size=image_size,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        batch_size=256,
    )


def write_square_raster(
    path: str | Path,
    size_px: int = 512,
    square: tuple[int, int, int, int] = (160, 192, 288, 320),
    res_m: float = 1.0,
    origin: tuple[float, float] = (500_000.0, 4_000_000.0),
    crs: str = "EPSG:32633",
    colour: tuple[int, int, int] = (220, 40, 40),
) -> tuple:
    """GeoTIFF (uint8 RGB) with a ``colour`` square at pixel cols/rows ``square`` = (c0, r0, c1, r1) on a
    green field; returns the square's bounds in the raster CRS."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    img = np.empty((3, size_px, size_px), np.uint8)
    img[0], img[1], img[2] = 60, 150, 60
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    c0, r0, c1, r1 = square
    for b in range(3):
        img[b, r0:r1, c0:c1] = colour[b]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size_px,
        height=size_px,
        count=3,
        dtype="uint8",
        crs=crs,
        transform=from_origin(origin[0], origin[1], res_m, res_m),
    ) as dst:
        dst.write(img)
    x0, y1 = origin
    return (x0 + c0 * res_m, y1 - r1 * res_m, x0 + c1 * res_m, y1 - r0 * res_m)


def build_test_index(
    tmp: str | Path, *, scales_m: tuple[float, ...] = (128.0, 256.0), image_size: int = 32, **raster_kwargs
):
    """Raster + index over it with :func:`colour_model`; returns (TileIndex, square bounds)."""
    from geosearch.index import TileIndex, build_index
    from geosearch.settings import Settings

    tmp = Path(tmp)
    tif = tmp / "square.tif"
    sq = write_square_raster(tif, **raster_kwargs)
    model = colour_model(image_size)
    settings = Settings(scales_m=list(scales_m), overlap=0.5, batch_size=64)
    build_index([tif], tmp / "square.duckdb", model=model, settings=settings, progress=False)
    index = TileIndex.open(tmp / "square.duckdb")
    index.attach_model(model)
    return index, sq
