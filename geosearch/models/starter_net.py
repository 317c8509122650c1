"""The starter model's two towers for inference, in plain torch.

:func:`geosearch.models.starter.build_clip` builds the starter as open_clip's ``CustomTextCLIP``
(a timm ResNet-10t image tower, a Hugging Face BERT text tower); training uses it. Importing
open_clip, timm and transformers costs ~3 s per process (they pull in torchvision and
torch._dynamo), longer than a whole ``geosearch ask``. This module rebuilds the same two towers
from the same tensors with the same torch operations in the same order, so embeddings are
bit-for-bit those of the open_clip model (``tests/test_starter_model.py`` checks it), and imports
only torch, ``tokenizers`` and ``ftfy``.

Covered: what the starter's JSON architecture uses (``resnet10t``, avg pool, linear projection;
a BERT with absolute positions, GELU, mean pooling, no text projection). Anything else raises, and
:func:`geosearch.models.starter.load_clip` is the fallback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geosearch.errors import GeoSearchError
from geosearch.models.text import clean_text


class Unsupported(GeoSearchError):
    """The architecture is not one this module rebuilds; use the open_clip model."""


# Layers without their random initialisation (~0.15 s for 23 M parameters): every tensor is then
# loaded from the weight files with a strict load_state_dict, so none is left uninitialised.
class _NoInit:
    def reset_parameters(self) -> None:
        pass


class _Conv2d(_NoInit, nn.Conv2d):
    pass


class _BatchNorm2d(_NoInit, nn.BatchNorm2d):
    pass


class _Linear(_NoInit, nn.Linear):
    pass


class _Embedding(_NoInit, nn.Embedding):
    pass


class _LayerNorm(_NoInit, nn.LayerNorm):
    pass


# --- image tower: timm's ResNet-10t ("deep tiered" stem, avg-down shortcuts, BasicBlock x [1,1,1,1])


def _bn(c: int) -> nn.BatchNorm2d:
    return _BatchNorm2d(c)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity(),
                _Conv2d(cin, cout, 1, 1, 0, bias=False),
                _bn(cout),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act2(x)


class _ResNet10t(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(
            _Conv2d(3, 24, 3, 2, 1, bias=False),
            _bn(24),
            nn.ReLU(inplace=True),
            _Conv2d(24, 32, 3, 1, 1, bias=False),
            _bn(32),
            nn.ReLU(inplace=True),
            _Conv2d(32, 64, 3, 1, 1, bias=False),
        )
        self.bn1 = _bn(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [64, 64, 128, 256, 512]
        for i in range(4):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(_BasicBlock(chans[i], chans[i + 1], stride)))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.global_pool(x), 1)


class ImageTower(nn.Module):
    """open_clip's ``TimmModel`` adapter for resnet10t + avg pool + linear projection (no bias)."""

    def __init__(self, embed_dim: int, image_size: int):
        super().__init__()
        self.trunk = _ResNet10t()
        self.head = nn.Sequential()
        self.head.add_module("drop", nn.Dropout(0.0))
        self.head.add_module("proj", _Linear(self.trunk.num_features, embed_dim, bias=False))
        self.image_size = (image_size, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


# --- text tower: BERT (transformers' BertModel, sdpa attention) + open_clip's mean pooler -----


class _Embeddings(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        h = cfg["hidden_size"]
        self.word_embeddings = _Embedding(cfg["vocab_size"], h, padding_idx=cfg.get("pad_token_id", 0))
        self.position_embeddings = _Embedding(cfg["max_position_embeddings"], h)
        self.token_type_embeddings = _Embedding(cfg["type_vocab_size"], h)
        self.LayerNorm = _LayerNorm(h, eps=cfg["layer_norm_eps"])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        pos = torch.arange(n, device=ids.device).unsqueeze(0)
        types = torch.zeros_like(ids)
        x = self.word_embeddings(ids) + self.token_type_embeddings(types)
        x = x + self.position_embeddings(pos)
        return self.LayerNorm(x)


class _Layer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        h, inner = cfg["hidden_size"], cfg["intermediate_size"]
        self.heads = cfg["num_attention_heads"]
        self.head_dim = h // self.heads
        self.scaling = self.head_dim**-0.5
        eps = cfg["layer_norm_eps"]
        self.query, self.key, self.value = _Linear(h, h), _Linear(h, h), _Linear(h, h)
        self.attn_dense, self.attn_norm = _Linear(h, h), _LayerNorm(h, eps=eps)
        self.inter_dense = _Linear(h, inner)
        self.out_dense, self.out_norm = _Linear(inner, h), _LayerNorm(h, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        shape = (*x.shape[:-1], -1, self.head_dim)
        q = self.query(x).view(*shape).transpose(1, 2)
        k = self.key(x).view(*shape).transpose(1, 2)
        v = self.value(x).view(*shape).transpose(1, 2)
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=0.0, scale=self.scaling, is_causal=False
        )
        a = a.reshape(a.shape[0], -1, q.shape[2], v.shape[-1]).transpose(1, 2).contiguous()
        a = a.reshape(*x.shape[:-1], -1).contiguous()
        x = self.attn_norm(self.attn_dense(a) + x)
        y = F.gelu(self.inter_dense(x))
        return self.out_norm(self.out_dense(y) + x)


# transformers' parameter names -> ours (per layer)
_LAYER_KEYS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_dense",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "inter_dense",
    "output.dense": "out_dense",
    "output.LayerNorm": "out_norm",
}


class TextTower(nn.Module):
    """BertModel (no pooling layer) + masked mean pooling, as open_clip's ``HFTextEncoder``."""

    def __init__(self, cfg: dict):
        super().__init__()
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu":
            raise Unsupported(f"text tower {cfg.get('model_type')}/{cfg.get('hidden_act')}")
        if cfg.get("position_embedding_type", "absolute") != "absolute" or cfg.get("is_decoder"):
            raise Unsupported("text tower: only absolute positions, encoder only")
        self.pad_id = int(cfg.get("pad_token_id", 0))
        self.embeddings = _Embeddings(cfg)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg["num_hidden_layers"]))

    def load_bert(self, state: dict[str, torch.Tensor]) -> None:
        """Load a BertModel state dict (its own key names; ``position_ids`` and the pooler dropped)."""
        own: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            key = key.removeprefix("bert.")
            if key.startswith("embeddings."):
                if key.endswith(("position_ids", "token_type_ids")):
                    continue
                own[key] = value
            elif key.startswith("encoder.layer."):
                _, _, i, rest = key.split(".", 3)
                name, _, leaf = rest.rpartition(".")
                if name not in _LAYER_KEYS:
                    raise Unsupported(f"text tower tensor {key}")
                own[f"layers.{i}.{_LAYER_KEYS[name]}.{leaf}"] = value
            elif not key.startswith("pooler."):
                raise Unsupported(f"text tower tensor {key}")
        self.load_state_dict(own, strict=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keep = (ids != self.pad_id).long()
        mask = None
        if not bool(keep.all()):  # transformers passes no mask when nothing is padding
            n = ids.shape[1]
            mask = keep.bool()[:, None, None, :].expand(ids.shape[0], 1, n, n).contiguous()
        x = self.embeddings(ids)
        for layer in self.layers:
            x = layer(x, mask)
        masked = x * keep.unsqueeze(-1)
        return masked.sum(dim=1) / keep.sum(-1, keepdim=True)


class StarterNet(nn.Module):
    """``encode_image`` / ``encode_text`` like open_clip's CustomTextCLIP (unnormalised features)."""

    def __init__(self, embed_dim: int, image_size: int, text_cfg: dict):
        super().__init__()
        self.visual = ImageTower(embed_dim, image_size)
        self.text = TextTower(text_cfg)
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.embed_dim = embed_dim

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        f = self.visual(image)
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        f = self.text(text)
        return F.normalize(f, dim=-1) if normalize else f


def check_arch(cfg: dict[str, Any], text_cfg: dict[str, Any]) -> None:
    """Raise :class:`Unsupported` unless ``cfg`` is an architecture this module rebuilds exactly."""
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    wanted = {"timm_model_name": "resnet10t", "timm_pool": "avg", "timm_proj": "linear"}
    for key, value in wanted.items():
        if v.get(key) != value:
            raise Unsupported(f"vision {key}={v.get(key)!r}")
    if v.get("timm_proj_bias") or v.get("timm_drop") or v.get("timm_drop_path"):
        raise Unsupported("vision tower options")
    if t.get("hf_pooler_type") != "mean_pooler" or t.get("hf_proj_type") is not None:
        raise Unsupported("text pooler / projection")
    if int(text_cfg["hidden_size"]) != int(cfg["embed_dim"]):
        raise Unsupported("text width != embed_dim needs a projection")


def build_starter_net(
    cfg: dict[str, Any], image_state: dict[str, torch.Tensor], text_dir: Path
) -> StarterNet:
    """The starter's CLIP from its architecture JSON, its image-tower tensors (``visual.*``,
    ``logit_scale``, already in float32) and the text tower's folder (config.json, model.safetensors)."""
    from safetensors.torch import load_file

    text_cfg = json.loads((text_dir / "config.json").read_text())
    check_arch(cfg, text_cfg)
    net = StarterNet(int(cfg["embed_dim"]), int(cfg["vision_cfg"]["image_size"]), text_cfg)
    net.text.load_bert(load_file(str(text_dir / "model.safetensors")))
    unknown = [k for k in image_state if not k.startswith("visual.") and k != "logit_scale"]
    if unknown:
        raise GeoSearchError(f"unexpected tensor {unknown[0]!r} for this architecture")
    visual = {k.removeprefix("visual."): v for k, v in image_state.items() if k.startswith("visual.")}
    net.visual.load_state_dict(visual, strict=True)
    if "logit_scale" in image_state:
        net.logit_scale.data.copy_(image_state["logit_scale"])
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


# --- tokenizer: open_clip's HFTokenizer (clean "whitespace") over the fast BERT tokenizer ------


def build_fast_tokenizer(text_dir: Path, context_length: int) -> Callable[[list[str]], torch.Tensor]:
    """list[str] -> LongTensor (N, context_length): cleaned, lower-cased WordPiece ids with [CLS] /
    [SEP], truncated and right-padded with 0 to ``context_length``, as open_clip's HFTokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(text_dir / "tokenizer.json"))
    pad = tok.token_to_id("[PAD]")
    if pad is None:
        raise Unsupported("tokenizer has no [PAD]")
    tok.enable_truncation(max_length=context_length, strategy="longest_first", stride=0)
    tok.enable_padding(direction="right", pad_id=pad, pad_type_id=0, pad_token="[PAD]", length=context_length)

    def tokenize(texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        enc = tok.encode_batch([clean_text(t) for t in texts])
        return torch.tensor([e.ids for e in enc], dtype=torch.long)

    return tokenize
