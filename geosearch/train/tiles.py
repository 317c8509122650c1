"""Training inputs that look like index tiles: square crops of small mosaics of chips.

The index embeds square grid tiles at 128 m to 1024 m. On a mosaic of scenes those tiles cut a
thing in half, straddle two scenes, or hold several. A model trained only on whole, centred AID
frames has never seen such inputs and scores a corner of a stadium like a whole stadium. Here each
training sample is an *anchor* chip at the centre of a 3x3 mosaic of chips (drawn from the same
split) and a square crop whose side is log-uniform in ``side`` chip sides, centred somewhere on
the anchor. Its label is the class that covers most of the crop when that class covers at least
``min_share`` of it, otherwise the extra *generic* class ("nothing in particular"), so a mixed
tile learns to sit away from every class rather than near one of them.

Neighbours are not uniform: with ``p_same`` a neighbour is another chip of the anchor's class
(real land is contiguous: residential next to residential), with ``p_confusable`` one of a
confusable class (playground next to stadium, pond next to river), so a crop straddling look-alikes
must be decided by what covers it. Everything is batched: one uint8 gather, one affine resample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from geosearch.train.augment import AugmentConfig, colour_jitter, random_dihedral

# Groups of AID classes that look alike from above; each class's confusables are the others of its
# groups. Names not present in a dataset are ignored.
CONFUSABLE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("Playground", "Stadium", "BaseballField"),
    ("Pond", "River", "Lake", "Beach"),
    ("Park", "Resort", "Square", "Meadow"),
    ("Desert", "BareLand"),
    ("DenseResidential", "MediumResidential", "SparseResidential"),
    ("Commercial", "Industrial", "Center", "School", "Church"),
    ("Bridge", "Viaduct", "River"),
    ("Farmland", "Meadow"),
    ("Mountain", "Forest"),
    ("Airport", "RailwayStation", "Port", "Parking"),
    ("StorageTanks", "Industrial"),
)

GENERIC_PROMPTS = (
    "an aerial image of mixed land use.",
    "a satellite image of several different areas.",
    "an aerial image with nothing in particular.",
    "a remote sensing image of a patchwork of different land covers.",
    "an overhead view of a mix of scenes.",
)


@dataclass(frozen=True)
class TileCropConfig:
    side: tuple[float, float] = (0.25, 2.5)  # crop side, in chip sides (log-uniform)
    min_share: float = 0.6  # a class must cover this share of the crop to label it
    p_same: float = 0.3  # a neighbour chip of the anchor's class
    p_confusable: float = 0.3  # a neighbour chip of a confusable class


def confusable_table(classes: list[str]) -> list[list[int]]:
    """For each class id, the ids of its confusable classes (may be empty)."""
    index = {c: i for i, c in enumerate(classes)}
    out: list[set[int]] = [set() for _ in classes]
    for group in CONFUSABLE_GROUPS:
        ids = [index[c] for c in group if c in index]
        for i in ids:
            out[i].update(j for j in ids if j != i)
    return [sorted(s) for s in out]


class NeighbourSampler:
    """Draws neighbour chips for anchors: same class, confusable class or any, per :class:`TileCropConfig`."""

    def __init__(self, labels: torch.Tensor, classes: list[str], cfg: TileCropConfig) -> None:
        self.labels = labels.long()
        self.cfg = cfg
        n_cls = len(classes)
        self.order = torch.argsort(self.labels, stable=True)
        counts = torch.bincount(self.labels, minlength=n_cls)
        self.count = counts
        self.start = torch.cumsum(counts, 0) - counts
        conf = confusable_table(classes)
        width = max([len(c) for c in conf] + [1])
        self.conf = torch.full((n_cls, width), -1, dtype=torch.long)
        for i, ids in enumerate(conf):
            if ids:
                self.conf[i, : len(ids)] = torch.tensor(ids)
        self.n_conf = torch.tensor([len(c) for c in conf])

    def _member(self, cls: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A random member of each class in ``cls`` (classes with no member give a random chip)."""
        cnt = self.count[cls]
        off = torch.floor(torch.rand(cls.shape, generator=gen) * cnt.clamp(min=1)).long()
        pick = self.order[(self.start[cls] + off).clamp(max=len(self.order) - 1)]
        anyone = torch.randint(0, len(self.labels), cls.shape, generator=gen)
        return torch.where(cnt > 0, pick, anyone)

    def __call__(self, anchors: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(m,) anchor indices -> (m, 9) chip indices of the 3x3 mosaic, anchor at the centre (4)."""
        m = len(anchors)
        cls = self.labels[anchors].unsqueeze(1).expand(m, 9)
        u = torch.rand(m, 9, generator=gen)
        same = self._member(cls, gen)
        k = torch.floor(torch.rand(m, 9, generator=gen) * self.n_conf[cls].clamp(min=1)).long()
        conf_cls = self.conf[cls, k.clamp(max=self.conf.shape[1] - 1)]
        has_conf = conf_cls >= 0
        conf = self._member(conf_cls.clamp(min=0), gen)
        anyone = torch.randint(0, len(self.labels), (m, 9), generator=gen)
        p1, p2 = self.cfg.p_same, self.cfg.p_same + self.cfg.p_confusable
        out = torch.where(u < p1, same, torch.where((u < p2) & has_conf, conf, anyone))
        out[:, 4] = anchors
        return out


def cell_shares(cx: torch.Tensor, cy: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Share of a square crop (centre ``cx, cy`` and ``side`` in chip units, mosaic = [0, 3]^2)
    covered by each of the 9 cells, row-major: (m, 9), rows sum to 1 for crops inside the mosaic."""
    lo = torch.arange(3, dtype=cx.dtype)

    def overlap(c: torch.Tensor) -> torch.Tensor:  # (m, 3): overlap of [c - s/2, c + s/2] with each cell
        a = (c - side / 2).unsqueeze(1)
        b = (c + side / 2).unsqueeze(1)
        return (torch.minimum(b, lo + 1) - torch.maximum(a, lo)).clamp(min=0)

    ox, oy = overlap(cx), overlap(cy)
    return (oy.unsqueeze(2) * ox.unsqueeze(1)).reshape(len(cx), 9) / (side * side).unsqueeze(1)


def tile_crops(
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    sampler: NeighbourSampler,
    size: int,
    gen: torch.Generator,
    cfg: TileCropConfig = TileCropConfig(),
    aug: AugmentConfig = AugmentConfig(),
    n_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tile-like crops around ``anchors``.

    Returns ``(x, target, anchor_share)``: float NCHW in [0, 1] at ``size``; the dominant class id,
    or ``n_classes`` (the generic class) when no class covers ``cfg.min_share``; and the share of
    each crop covered by its anchor chip (captions describe the anchor only)."""
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    m = len(anchors)
    chips = sampler(anchors, gen)  # (m, 9)
    s = images_u8.shape[1]
    canvas = images_u8[chips.reshape(-1).to(images_u8.device)].reshape(m, 3, 3, s, s, 3)
    canvas = canvas.permute(0, 5, 1, 3, 2, 4).reshape(m, 3, 3 * s, 3 * s).float().div_(255.0)

    lo, hi = cfg.side
    side = torch.exp(torch.rand(m, generator=gen) * (math.log(hi) - math.log(lo)) + math.log(lo))
    half = side / 2
    cx = 1 + torch.rand(m, generator=gen)  # a point on the anchor, then kept inside the mosaic
    cy = 1 + torch.rand(m, generator=gen)
    cx = torch.minimum(torch.maximum(cx, half), 3 - half)
    cy = torch.minimum(torch.maximum(cy, half), 3 - half)
    shares = cell_shares(cx, cy, side)
    by_class = torch.zeros(m, n_classes).scatter_add_(1, labels[chips], shares)
    top, cls = by_class.max(dim=1)
    target = torch.where(top >= cfg.min_share, cls, torch.full_like(cls, n_classes))

    theta = torch.zeros(m, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = side / 3
    theta[:, 0, 2], theta[:, 1, 2] = cx / 1.5 - 1, cy / 1.5 - 1
    if aug.dihedral:
        random_dihedral(theta, gen)
    # resample at twice the size and average down: large crops shrink ~8x, and a plain bilinear
    # resample would alias where the index reads from overviews
    grid = F.affine_grid(theta.to(canvas.device), [m, 3, 2 * size, 2 * size], align_corners=False)
    x = F.grid_sample(canvas, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = F.avg_pool2d(x, 2)
    return colour_jitter(x, gen, aug), target, shares[:, 4]
