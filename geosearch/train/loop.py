"""LiT-style contrastive training: a locked pretrained text tower, an image tower from scratch.

Text embeddings of every caption and class prompt are computed once and cached on disk, so an
epoch only runs the image tower. Images are decoded once into one uint8 array. State is saved
every few steps to ``OUT/last.pt``; re-running the same command continues from there, and the
batch order and augmentations depend only on (seed, epoch, step), so a resumed run matches an
uninterrupted one. The best epoch on the validation split is exported to ``OUT/best.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geosearch.errors import GeoSearchError
from geosearch.fileio import atomic_path
from geosearch.models.base import apply_threads, resolve_device
from geosearch.models.starter import (
    MEAN,
    STD,
    build_clip,
    build_tokenizer,
    load_arch_config,
    save_weights,
    trim_padding,
)
from geosearch.train.augment import AugmentConfig, augment, normalize, to_float
from geosearch.train.data import Dataset, class_prompts, decode_images, load_source
from geosearch.train.evaluate import evaluate_embeddings, format_metrics
from geosearch.train.tiles import GENERIC_PROMPTS, NeighbourSampler, TileCropConfig, tile_crops


@dataclass
class TrainConfig:
    source: str
    out: str
    split: str | None = "train"
    val_split: str | None = "dev"
    arch: str = "geosearch-starter"
    epochs: int = 32
    batch_size: int = 128
    image_size: int = 96
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    template_prob: float = 0.3  # chance that an image's caption is a class-name prompt instead
    class_loss_weight: float = 1.0  # image vs. all class-prompt embeddings (no in-batch false negatives)
    rank_loss_weight: float = 1.0  # each class prompt vs. all images of the batch (see rank_loss)
    tile_frac: float = 0.5  # share of each batch that is tile-like mosaic crops (geosearch.train.tiles)
    tile_side: tuple[float, float] = (0.25, 2.5)  # their side, in chip sides
    store_size: int | None = None  # decoded side of train images (default: native 150 with tiles)
    val_tiles: int = 2000  # seeded tile-like crops of the validation split for `tile_acc`
    seed: int = 0
    threads: int = 2
    device: str = "auto"
    ckpt_every: int = 20  # steps between checkpoints (plus one at each epoch end)
    resume: bool = True
    progress: bool = True


@dataclass
class TrainResult:
    out: Path
    best_path: Path | None
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def _step_seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step) % (2**63)


class TextBank:
    """Frozen text embeddings (unit norm) of a fixed list of strings, cached on disk."""

    def __init__(
        self,
        texts: list[str],
        model: torch.nn.Module,
        tokenizer,
        cache_dir: Path,
        batch: int = 256,
        progress: bool = False,
    ) -> None:
        self.texts = list(dict.fromkeys(texts))
        self.index = {t: i for i, t in enumerate(self.texts)}
        self.model, self.tokenizer = model, tokenizer
        key = hashlib.sha256("\n".join(self.texts).encode()).hexdigest()[:16]
        path = cache_dir / f"text_{key}.pt"
        if path.is_file():
            self.emb = torch.load(path, map_location="cpu", weights_only=True)
        else:
            # batches of similar length, so little compute is spent on padding
            order = sorted(range(len(self.texts)), key=lambda i: len(self.texts[i]))
            chunks = range(0, len(order), batch)
            if progress:
                from tqdm import tqdm

                chunks = tqdm(chunks, desc="text embeddings (once)", unit="batch")
            emb = torch.zeros(len(self.texts), 0)
            for i in chunks:
                part = order[i : i + batch]
                vecs = self._encode([self.texts[j] for j in part])
                if emb.shape[1] == 0:
                    emb = torch.zeros(len(self.texts), vecs.shape[1])
                emb[part] = vecs
            self.emb = emb
            with atomic_path(path) as tmp:
                torch.save(self.emb, tmp)

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        tokens = trim_padding(self.tokenizer(texts))
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()

    def lookup(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.index]
        if missing:
            extra = self._encode(missing)
            for t in missing:
                self.index[t] = len(self.texts)
                self.texts.append(t)
            self.emb = torch.cat([self.emb, extra])
        return self.emb[[self.index[t] for t in texts]].numpy()


def _param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.visual.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    no_decay.append(model.logit_scale)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


@torch.inference_mode()
def encode_split(
    model: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    size: int,
    device: torch.device,
    batch: int = 256,
) -> np.ndarray:
    """Unit image embeddings of uint8 NHWC images, or of float NCHW crops already at ``size``."""
    was_training = model.visual.training
    model.visual.eval()
    out = []
    for i in range(0, len(images), batch):
        part = images[i : i + batch]
        if isinstance(part, torch.Tensor) and part.is_floating_point():
            x = part.to(device)
        else:
            x = to_float(torch.as_tensor(part).to(device), size)
        x = normalize(x, MEAN, STD).contiguous(memory_format=torch.channels_last)
        out.append(F.normalize(model.visual(x).float(), dim=-1).cpu().numpy())
    model.visual.train(was_training)
    return np.concatenate(out)


def _tile_accuracy(
    model: torch.nn.Module, tiles: tuple[torch.Tensor, torch.Tensor], class_text: torch.Tensor
) -> float:
    """Zero-shot accuracy on tile-like validation crops that one class covers (generic ones left out)."""
    x_all, target = tiles
    keep = (target < class_text.shape[0]).numpy()
    feats = encode_split(model, x_all, x_all.shape[-1], class_text.device)
    pred = (feats @ class_text.float().cpu().numpy().T).argmax(axis=1)
    return float((pred[keep] == target.numpy()[keep]).mean()) if keep.any() else 0.0


def rank_loss(class_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Text-to-image ranking: each class present in the batch must pick its own images out of all.

    Search asks the other question than the class term: not "which class is this crop" but "which
    crop is this class". ``class_logits`` are the (images x classes) scaled similarities that the
    class term also uses; read down a column instead of along a row, each class with images in the
    batch gets a softmax over every image of the batch (whole chips, tile crops of any class,
    generic crops) with all of its images as positives (``-log sum_pos p``). A look-alike piece of
    another scene or a mixed crop that scores above the class's real images costs here, which the
    image-side terms never see. ``target`` values >= the number of columns (generic) are negatives only.
    """
    present = torch.unique(target[target < class_logits.shape[1]])
    if present.numel() == 0:
        return class_logits.sum() * 0
    log_p = class_logits[:, present].T.log_softmax(dim=1)  # (classes present, images)
    positive = target[None, :] == present[:, None]
    return -(torch.logsumexp(log_p.masked_fill(~positive, float("-inf")), dim=1)).mean()


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or continue) a training run described by ``cfg``; see the module docstring."""
    import open_clip
    from tqdm import tqdm

    if not 0.0 <= cfg.tile_frac <= 1.0:
        raise GeoSearchError(f"tile_frac must be in [0, 1], got {cfg.tile_frac}")
    if not 0.0 < cfg.tile_side[0] <= cfg.tile_side[1] <= 3.0:
        raise GeoSearchError(f"tile_side must satisfy 0 < min <= max <= 3 chip sides, got {cfg.tile_side}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = out / "cache"
    apply_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    train_ds = load_source(cfg.source, cfg.split)
    val_ds: Dataset | None = None
    src = Path(cfg.source)
    is_manifest = src.is_file() or (src / "manifest.jsonl").is_file()
    if cfg.val_split and (is_manifest or (src / cfg.val_split).is_dir()):
        val_ds = load_source(cfg.source, cfg.val_split)
    classes = train_ds.classes
    labels = torch.from_numpy(train_ds.labels)

    # a little larger than the crop, so crops rarely upsample; tile crops zoom in to a quarter of a
    # chip, so they keep the chips' native 150 px
    store = cfg.store_size or (150 if cfg.tile_frac > 0 else int(round(cfg.image_size * 8 / 7)))
    t0 = time.time()
    train_imgs = torch.from_numpy(decode_images(train_ds.records, store, cache_dir))
    val_imgs = decode_images(val_ds.records, store, cache_dir) if val_ds else None
    print(
        f"decoded {len(train_imgs)} train + {0 if val_imgs is None else len(val_imgs)} val images "
        f"in {time.time() - t0:.1f}s",
        flush=True,
    )

    arch_cfg = load_arch_config(cfg.arch, cfg.image_size)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = build_clip(arch_cfg)
    tokenizer = build_tokenizer(arch_cfg)
    prompts = {c: class_prompts(c) for c in classes}
    texts = [t for c in classes for t in prompts[c]]
    texts += [t for r in train_ds.records for t in r.captions]
    texts += list(GENERIC_PROMPTS)
    if val_ds:
        texts += [t for c in val_ds.classes for t in class_prompts(c)]
        texts += [t for r in val_ds.records for t in r.captions]
    t0 = time.time()
    bank = TextBank(texts, model, tokenizer, cache_dir, progress=cfg.progress)
    print(f"text bank: {len(bank.texts)} strings in {time.time() - t0:.1f}s", flush=True)
    text_emb = bank.emb.to(device)
    prompt_idx = torch.tensor([[bank.index[t] for t in prompts[c]] for c in classes])
    caption_idx = [[bank.index[t] for t in r.captions] for r in train_ds.records]
    max_caps = max([len(c) for c in caption_idx] + [1])
    cap_table = torch.full((len(caption_idx), max_caps), -1, dtype=torch.long)
    for i, caps in enumerate(caption_idx):
        if caps:
            cap_table[i, : len(caps)] = torch.tensor(caps)
    n_caps = torch.tensor([len(c) for c in caption_idx])
    # The zero-shot classifier: mean prompt embedding per class. Contrasting an image against all
    # classes' prompts has no false negatives, unlike in-batch ClipLoss, where same-class images and
    # near-identical captions are pushed apart; it makes the few-epoch CPU recipe converge much faster.
    class_text = F.normalize(bank.emb[prompt_idx].mean(dim=1), dim=-1)
    # one more class for tile crops that no class covers: "nothing in particular"
    generic = F.normalize(bank.emb[[bank.index[t] for t in GENERIC_PROMPTS]].mean(dim=0), dim=-1)
    class_text = torch.cat([class_text, generic[None]]).to(device)
    n_cls = len(classes)
    tile_cfg = TileCropConfig(side=tuple(cfg.tile_side))
    sampler = NeighbourSampler(labels, classes, tile_cfg)
    val_tile_set = None
    if val_ds is not None and val_imgs is not None and cfg.val_tiles > 0:
        val_labels = torch.from_numpy(val_ds.labels)
        vgen = torch.Generator().manual_seed(12345)
        v_anchor = torch.randint(0, len(val_imgs), (cfg.val_tiles,), generator=vgen)
        v_sampler = NeighbourSampler(val_labels, val_ds.classes, tile_cfg)
        parts, targets = [], []
        for i in range(0, cfg.val_tiles, 250):  # no colour jitter: brightness 0 etc.
            x, tgt, _ = tile_crops(
                torch.from_numpy(val_imgs),
                val_labels,
                v_anchor[i : i + 250],
                v_sampler,
                cfg.image_size,
                vgen,
                tile_cfg,
                AugmentConfig(brightness=0, contrast=0, saturation=0, hue_shift=0),
                n_classes=len(val_ds.classes),
            )
            parts.append(x)
            targets.append(tgt)
        val_tile_set = (torch.cat(parts), torch.cat(targets))

    if device.type == "cuda":  # augmentation runs batched on the device: keep the images there
        train_imgs = train_imgs.to(device)
    model.text.to("cpu")  # the text tower is not needed any more during training
    model.visual.to(device).to(memory_format=torch.channels_last)
    model.logit_scale.data = model.logit_scale.data.to(device)
    model.visual.train()

    n = len(train_imgs)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_frac * total))
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    loss_fn = open_clip.ClipLoss()
    aug_cfg = AugmentConfig()

    last_path, best_path = out / "last.pt", out / "best.safetensors"
    history: list[dict] = []
    best_score, epoch0, step0 = -math.inf, 0, 0
    if not (cfg.resume and last_path.is_file()):
        (out / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh history
    if cfg.resume and last_path.is_file():
        ck = torch.load(last_path, map_location="cpu", weights_only=False)
        model.visual.load_state_dict(ck["visual"])
        model.logit_scale.data.copy_(ck["logit_scale"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        history, best_score = ck["history"], ck["best_score"]
        epoch0, step0 = ck["epoch"], ck["step"]
        print(f"resumed from {last_path}: epoch {epoch0 + 1}, step {step0}/{steps_per_epoch}", flush=True)

    def save_last(epoch: int, step: int, epoch_losses: list[float]) -> None:
        ck = {
            "visual": model.visual.state_dict(),
            "logit_scale": model.logit_scale.detach().cpu(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "history": history,
            "best_score": best_score,
            "epoch": epoch,
            "step": step,
            "epoch_losses": epoch_losses,
            "config": asdict(cfg),
        }
        with atomic_path(last_path) as tmp:
            torch.save(ck, tmp)

    for epoch in range(epoch0, cfg.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        start = step0 if epoch == epoch0 else 0
        losses: list[float] = []
        if start and cfg.resume and last_path.is_file():
            losses = list(
                torch.load(last_path, map_location="cpu", weights_only=False).get("epoch_losses", [])
            )
        t_epoch = time.time()
        bar = tqdm(
            range(start, steps_per_epoch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="step",
            disable=not cfg.progress,
            mininterval=5.0,
        )
        for step in bar:
            idx = perm[step * bs : (step + 1) * bs]
            gen = torch.Generator().manual_seed(_step_seed(cfg.seed, epoch, step))
            n_tile = int(round(cfg.tile_frac * len(idx)))
            plain, anchors = idx[: len(idx) - n_tile], idx[len(idx) - n_tile :]
            xs = [augment(train_imgs[plain].to(device), cfg.image_size, gen, aug_cfg)]
            target, caption_ok = labels[plain], torch.ones(len(plain), dtype=torch.bool)
            if n_tile:
                xt, tt, share = tile_crops(
                    train_imgs, labels, anchors, sampler, cfg.image_size, gen, tile_cfg, aug_cfg, n_cls
                )
                xs.append(xt.to(device))
                target = torch.cat([target, tt])
                # the anchor's captions describe the anchor: only where it is what the crop shows
                caption_ok = torch.cat([caption_ok, (tt == labels[anchors]) & (share >= tile_cfg.min_share)])
            x = normalize(torch.cat(xs), MEAN, STD).contiguous(memory_format=torch.channels_last)
            use_prompt = (torch.rand(len(idx), generator=gen) < cfg.template_prob) | (n_caps[idx] == 0)
            use_prompt |= ~caption_ok
            pick_p = prompt_idx[
                target.clamp(max=n_cls - 1), torch.randint(0, prompt_idx.shape[1], (len(idx),), generator=gen)
            ]
            pick_c = torch.floor(torch.rand(len(idx), generator=gen) * n_caps[idx].clamp(min=1)).long()
            cap = cap_table[idx, pick_c]
            tidx = torch.where(use_prompt, pick_p, cap)
            specific = (target < n_cls).to(device)  # generic crops: no caption, class term only
            txt = text_emb[tidx.to(device)]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                img = F.normalize(model.visual(x).float(), dim=-1)
            scale = model.logit_scale.exp()
            loss = loss_fn(img[specific], txt[specific], scale) if bool(specific.any()) else img.sum() * 0
            if cfg.class_loss_weight > 0 or cfg.rank_loss_weight > 0:
                class_logits = scale * img @ class_text.T  # images x (classes + generic)
                target_dev = target.to(device)
            if cfg.class_loss_weight > 0:
                loss = loss + cfg.class_loss_weight * F.cross_entropy(class_logits, target_dev)
            if cfg.rank_loss_weight > 0:
                loss = loss + cfg.rank_loss_weight * rank_loss(class_logits[:, :n_cls], target_dev)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            bar.set_postfix(
                loss=f"{np.mean(losses[-20:]):.3f}", T=f"{model.logit_scale.exp().item():.1f}", refresh=False
            )
            if (step + 1) % cfg.ckpt_every == 0 and step + 1 < steps_per_epoch:
                save_last(epoch, step + 1, losses)
        bar.close()
        entry: dict = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "epoch_s": round(time.time() - t_epoch, 1),
            "lr": opt.param_groups[0]["lr"],
        }
        if val_ds is not None and val_imgs is not None:
            feats = encode_split(model, val_imgs, cfg.image_size, device)
            metrics = evaluate_embeddings(feats, val_ds, bank.lookup)
            if val_tile_set is not None:
                metrics["tile_acc"] = _tile_accuracy(model, val_tile_set, class_text[: len(val_ds.classes)])
            entry.update(metrics)
            score = metrics["zeroshot_acc"] + metrics["class_p@10"] + metrics.get("tile_acc", 0.0)
            print(f"epoch {epoch + 1}: loss={entry['loss']:.4f} {format_metrics(metrics)}", flush=True)
        else:
            score = -entry["loss"]
            print(f"epoch {epoch + 1}: loss={entry['loss']:.4f}", flush=True)
        entry["score"] = score
        history.append(entry)
        if score > best_score:
            best_score = score
            save_weights(
                model,
                best_path,
                arch_cfg,
                {
                    "epoch": str(epoch + 1),
                    "metrics": json.dumps(entry),
                    "train_config": json.dumps(asdict(cfg)),
                },
            )
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        save_last(epoch + 1, 0, [])

    best = max(history, key=lambda h: h["score"]) if history else {}
    return TrainResult(
        out=out, best_path=best_path if best_path.is_file() else None, best_metrics=best, history=history
    )
