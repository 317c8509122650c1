"""`geosearch train` on generated images: it runs, the loss falls, and a killed run resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geosearch.train.augment import augment
from geosearch.train.data import class_phrase, class_prompts, load_source

COLOURS = {"forest": (30, 120, 40), "desert": (215, 185, 120), "pond": (40, 60, 170)}


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:40]
    for k, (name, colour) in enumerate(COLOURS.items()):
        (root / name).mkdir()
        for i in range(8):
            stripes = (np.sin((xx * (k + 1) + yy * (2 - k)) / 3.0 + i) * 30)[..., None]
            im = np.array(colour)[None, None] + stripes + rng.normal(0, 12, (40, 40, 3))
            Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_class_phrases_and_prompts():
    assert class_phrase("DenseResidential") == "dense residential"
    assert class_phrase("storage_tanks") == "storage tanks"
    assert class_prompts("Airport")[0] == "an aerial image of an airport."


def test_augment_is_deterministic_and_shaped():
    import torch

    x = torch.randint(0, 255, (4, 40, 40, 3), dtype=torch.uint8)
    a = augment(x, 32, torch.Generator().manual_seed(1))
    b = augment(x, 32, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_tiny_training_run_loss_falls_and_resumes(class_folders, tmp_path):
    from geosearch.models.starter import load_clip
    from geosearch.train.loop import TrainConfig, train

    data = load_source(class_folders, "train")
    assert len(data.records) == 24 and data.classes == sorted(COLOURS)

    cfg = TrainConfig(
        source=str(class_folders),
        out=str(tmp_path / "run"),
        epochs=2,
        batch_size=12,
        image_size=32,
        lr=3e-3,
        seed=0,
        threads=2,
        progress=False,
        ckpt_every=1,
    )
    first = train(cfg)
    assert [h["epoch"] for h in first.history] == [1, 2]
    cfg.epochs = 4  # re-running continues from OUT/last.pt instead of starting over
    result = train(cfg)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 4 and losses[:2] == [h["loss"] for h in first.history]
    assert min(losses[2:]) < losses[0]
    assert result.best_path is not None and result.best_path.is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["epoch"] == 4

    model, cfg_json = load_clip(result.best_path)  # the exported file rebuilds the full model
    assert cfg_json["vision_cfg"]["image_size"] == 32
    assert not any(p.requires_grad for p in model.text.parameters())

    # what `geosearch train` writes is a model name for every command: geosearch-starter:PATH
    from geosearch.models import get_model

    trained = get_model(f"geosearch-starter:{result.best_path}", device="cpu")
    assert trained.image_size == 32 and trained.model_id.endswith(f"@{trained.model_id[-16:]}")
    emb = trained.encode_images(np.zeros((2, 40, 40, 3), np.uint8))
    assert emb.shape == (2, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)


def test_rank_loss_wants_each_class_prompt_to_pick_its_own_images():
    import torch
    import torch.nn.functional as F

    from geosearch.train.loop import rank_loss

    gen = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(3, 16, generator=gen), dim=-1)
    scale = torch.tensor(30.0)
    target = torch.tensor([0, 0, 1, 2, 3])  # 3: a generic crop, a negative to every class
    right = torch.stack([text[0], text[0], text[1], text[2], -text.mean(0)])
    # a generic crop that looks like class 0 takes class 0's probability mass away
    lookalike = torch.stack([text[0], text[0], text[1], text[2], text[0]])

    def loss(img, tgt=target):  # the (images x classes) logits the training step builds once
        return rank_loss(scale * img @ text.T, tgt)

    assert loss(right) < 0.05
    assert loss(lookalike) > loss(right) + 0.1
    # gradients flow to the images; a batch of generic crops alone costs nothing
    img = right.clone().requires_grad_(True)
    loss(img + 0.1 * torch.randn(5, 16, generator=gen)).backward()
    assert img.grad is not None and float(img.grad.abs().sum()) > 0
    assert float(loss(right[-1:], target[-1:])) == 0.0
