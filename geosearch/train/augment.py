"""Batched augmentations for overhead imagery, done as one affine resample per batch.

Overhead images have no canonical "up", so all 8 dihedral transforms (90 degree rotations x flips)
are label-preserving. Random resized crops and colour jitter come on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    scale: tuple[float, float] = (0.35, 1.0)  # crop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio
    dihedral: bool = True
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue_shift: float = 0.03  # small per-channel gain change, a cheap hue jitter


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def to_float(images_u8: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1] at ``size`` (no augmentation)."""
    x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def augment(
    images_u8: torch.Tensor, size: int, gen: torch.Generator, cfg: AugmentConfig = AugmentConfig()
) -> torch.Tensor:
    """uint8 NHWC batch -> augmented float NCHW in [0, 1] at ``size``; randomness only from ``gen``."""
    n = images_u8.shape[0]
    x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    area = u(*cfg.scale)
    log_r = u(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    ratio = torch.exp(log_r)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # half-extent of the crop in normalised coords
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sy)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    if cfg.dihedral:
        random_dihedral(theta, gen)
    grid = F.affine_grid(theta.to(x.device), [n, 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return colour_jitter(x, gen, cfg)


def random_dihedral(theta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Compose each (n, 2, 3) affine of a batch with a random 90 degree rotation and flip, in place."""
    n = theta.shape[0]
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0])[k]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0])[k]
    rot = torch.stack([torch.stack([cos * flip, -sin], -1), torch.stack([sin * flip, cos], -1)], 1)
    theta[:, :, :2] = theta[:, :, :2] @ rot
    return theta


def colour_jitter(
    x: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig = AugmentConfig()
) -> torch.Tensor:
    """Per-image brightness, contrast, saturation and channel-gain jitter of float NCHW in [0, 1]."""
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    b = u(1 - cfg.brightness, 1 + cfg.brightness).view(n, 1, 1, 1)
    c = u(1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1)
    s = u(1 - cfg.saturation, 1 + cfg.saturation).view(n, 1, 1, 1)
    gain = (1 + (torch.rand(n, 3, generator=gen) * 2 - 1) * cfg.hue_shift).view(n, 3, 1, 1)
    x = x * b.to(x.device) * gain.to(x.device)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c.to(x.device) + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * s.to(x.device) + grey
    return x.clamp_(0.0, 1.0)
