"""The elastic CLIP supernet: one set of weights that holds every student of a ViT space.

The supernet keeps its weights in the largest open_clip towers of the space (a
``VisionTransformer`` and, when the space has student text towers, a ``TextTransformer``),
with open_clip's parameter names and layouts, and runs any subnet from slices of them:

- depth: the first ``layers`` blocks;
- width w: the first w channels of every token (q rows 0:w, k rows W:W+w and v rows
  2W:2W+w of ``in_proj``, columns 0:w everywhere); each LayerNorm normalises over those w;
- heads: the sliced width split into ``heads`` heads of w / heads;
- MLP ratio r: the first int(w * r) hidden units;
- patch size: one patch kernel, resized to each patch size by FlexiViT's pseudo-inverse
  resize (``timm.layers.PatchEmbedResamplerFixedOrigSize``);
- resolution: one position table, resampled to each token grid
  (``timm.layers.resample_abs_pos_embed``, the class token kept).

Dimensions are uniform per tower, so every subnet is a plain open_clip student:
``supernet/extract.py`` writes these slices into the model ``build_image_tower`` /
``build_text_tower`` build for its StudentConfig, and that model's forward equals the
supernet's forward for the same configuration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..student import StudentConfig, TextTowerConfig, VisionTowerConfig, build_image_tower, build_text_tower

LN_EPS = 1e-5  # open_clip's LayerNorm (torch's default)


@dataclass(frozen=True)
class SupernetShape:
    """The largest dimensions of each tower: what the supernet's weights must hold."""

    embed_dim: int
    layers: int  # image tower blocks
    width: int  # image token width
    mlp_ratio: float  # largest image MLP ratio
    kernel: int  # side of the stored patch kernel (the largest patch size)
    grid: int  # side of the stored position table (the largest token grid)
    text_layers: int = 0  # 0: the space has no student text tower
    text_width: int = 0
    text_mlp_ratio: float = 4.0
    context_length: int = 0
    vocab_size: int = 0

    @classmethod
    def of_space(cls, space: Any, embed_dim: int) -> SupernetShape:
        """The shape holding every student of ``space`` (a SearchSpace of ViT image towers).

        Raises:
            ConfigError: the space has timm trunks (not elastic) or a continuous dimension.
        """
        if space.kinds["image"] != ("vit",):
            raise ConfigError("a supernet holds ViT image towers only: this space has timm trunks "
                              f"({', '.join(space.kinds['image'])}); use search.evaluator: short_distill",
                              file=space.source, key="search.evaluator")
        values = {}
        for name, dim in space.dims.items():
            if not dim.discrete:
                raise ConfigError(f"{name} is a continuous range: a supernet needs discrete choices",
                                  file=space.source, key=name)
            values[name] = dim.values()
        v = "image.vit."
        sizes, patches = values[v + "image_size"], values[v + "patch_size"]
        grids = [s // p for s in sizes for p in patches
                 if space.admits({v + "image_size": s, v + "patch_size": p})]
        t = "text.transformer."
        has_text = "transformer" in space.kinds["text"]
        from ..tokens import VOCAB_SIZE

        return cls(embed_dim=embed_dim, layers=max(values[v + "layers"]), width=max(values[v + "width"]),
                   mlp_ratio=max(values.get(v + "mlp_ratio", (4.0,))), kernel=max(patches), grid=max(grids),
                   text_layers=max(values[t + "layers"]) if has_text else 0,
                   text_width=max(values[t + "width"]) if has_text else 0,
                   text_mlp_ratio=max(values.get(t + "mlp_ratio", (4.0,))) if has_text else 4.0,
                   context_length=max(values[t + "context_length"]) if has_text else 0,
                   vocab_size=VOCAB_SIZE if has_text else 0)

    def container(self) -> tuple[VisionTowerConfig, TextTowerConfig]:
        """The tower configs of the largest towers, whose open_clip modules hold the weights."""
        vision = VisionTowerConfig(kind="vit", image_size=self.kernel * self.grid, layers=self.layers,
                                   width=self.width, heads=1, mlp_ratio=self.mlp_ratio, patch_size=self.kernel)
        text = (TextTowerConfig(kind="transformer", layers=self.text_layers, width=self.text_width, heads=1,
                                context_length=self.context_length, mlp_ratio=self.text_mlp_ratio,
                                vocab_size=self.vocab_size) if self.text_layers else TextTowerConfig())
        return vision, text


class ElasticCLIP(nn.Module):
    """The supernet: ``visual`` and ``text`` are the largest open_clip towers (``text`` None
    when the space has no student text tower); :meth:`encode_image` / :meth:`encode_text` run
    a subnet from their slices."""

    def __init__(self, shape: SupernetShape):
        super().__init__()
        from timm.layers.patch_embed import PatchEmbedResamplerFixedOrigSize

        self.shape = shape
        vision, text = shape.container()
        container = StudentConfig(embed_dim=shape.embed_dim, vision=vision, text=text)
        self.visual = build_image_tower(container)
        self.text = build_text_tower(container) if text.kind == "transformer" else None
        self._resize_kernel = PatchEmbedResamplerFixedOrigSize((shape.kernel, shape.kernel))

    # ---- the image tower -------------------------------------------------------------
    def patch_kernel(self, vision: VisionTowerConfig) -> torch.Tensor:
        """The patch kernel of a subnet: [w, 3, p, p]."""
        weight = self.visual.conv1.weight[:vision.width]
        p = vision.patch_size
        return weight if p == self.shape.kernel else self._resize_kernel(weight, (p, p))

    def positional_embedding(self, vision: VisionTowerConfig) -> torch.Tensor:
        """The position table of a subnet: [grid² + 1, w]."""
        from timm.layers import resample_abs_pos_embed

        table = self.visual.positional_embedding[:, :vision.width]
        grid = vision.image_size // vision.patch_size
        if grid == self.shape.grid:
            return table
        return resample_abs_pos_embed(table[None], [grid, grid], [self.shape.grid] * 2, num_prefix_tokens=1)[0]

    def encode_image(self, images: torch.Tensor, vision: VisionTowerConfig) -> torch.Tensor:
        """(B, 3, S, S) images at the subnet's resolution -> (B, embed_dim)."""
        v, w = self.visual, vision.width
        p = vision.patch_size
        x = F.conv2d(images, self.patch_kernel(vision), stride=p)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding[:w].to(x.dtype).expand(x.shape[0], 1, w), x], dim=1)
        x = x + self.positional_embedding(vision).to(x.dtype)
        x = _layer_norm(v.ln_pre, x, w)
        for block in v.transformer.resblocks[:vision.layers]:
            x = _block(block, x, w, vision.heads, int(w * vision.mlp_ratio), self.shape.width, None)
        x = _layer_norm(v.ln_post, x, w)
        return x[:, 0] @ v.proj[:w]

    # ---- the text tower --------------------------------------------------------------
    def encode_text(self, tokens: torch.Tensor, text: TextTowerConfig) -> torch.Tensor:
        """(B, context_length) token ids -> (B, embed_dim) for a student text tower."""
        t, w = self.text, text.width
        if t is None:
            raise ValueError("this supernet has no student text tower (its space uses the teacher's)")
        n = tokens.shape[1]
        emb = t.token_embedding
        table = getattr(emb, "lookup", None)  # compact_vocab's embedding: used rows only
        ids = table[tokens] if table is not None else tokens
        x = F.embedding(ids, emb.weight[:, :w])
        x = x + t.positional_embedding[:n, :w].to(x.dtype)
        mask = t.attn_mask[:n, :n] if t.attn_mask is not None else None
        for block in t.transformer.resblocks[:text.layers]:
            x = _block(block, x, w, text.heads, int(w * text.mlp_ratio), self.shape.text_width, mask)
        x = _layer_norm(t.ln_final, x, w)
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return pooled @ t.text_projection[:w]


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor, w: int) -> torch.Tensor:
    return F.layer_norm(x, (w,), norm.weight[:w], norm.bias[:w], LN_EPS)


def in_proj_rows(full: int, w: int, device: Any = None) -> torch.Tensor:
    """Rows of a stacked [q; k; v] projection of width ``full`` that a width-``w`` subnet uses."""
    base = torch.arange(w, device=device)
    return torch.cat([base, base + full, base + 2 * full])


def _block(block: nn.Module, x: torch.Tensor, w: int, heads: int, hidden: int, full: int,
           mask: torch.Tensor | None) -> torch.Tensor:
    """One open_clip ResidualAttentionBlock at width ``w``, ``heads`` heads, ``hidden`` MLP units."""
    attn = block.attn
    rows = in_proj_rows(full, w, x.device)
    qkv = F.linear(_layer_norm(block.ln_1, x, w), attn.in_proj_weight[rows, :w], attn.in_proj_bias[rows])
    b, n, _ = qkv.shape
    q, k, v = qkv.view(b, n, 3, heads, w // heads).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    y = F.linear(y.transpose(1, 2).reshape(b, n, w), attn.out_proj.weight[:w, :w], attn.out_proj.bias[:w])
    x = x + y
    mlp = block.mlp
    h = F.gelu(F.linear(_layer_norm(block.ln_2, x, w), mlp.c_fc.weight[:hidden, :w], mlp.c_fc.bias[:hidden]))
    return x + F.linear(h, mlp.c_proj.weight[:w, :hidden], mlp.c_proj.bias[:w])


class SubnetTowers(nn.Module):
    """A student as a view of the supernet, with the interface of the trainer's ``StudentTowers``
    (``visual``, ``text`` or None, ``config``): its forward is the supernet's sliced forward, and no
    weight is copied. Scoring a student needs no more; ``supernet/extract.py`` makes the standalone
    model (for export, fine-tuning and full runs) with the same embeddings."""

    def __init__(self, supernet: ElasticCLIP, config: StudentConfig):
        super().__init__()
        self.config = config
        self.visual = _View(supernet, supernet.encode_image, config.vision)
        self.text = _View(supernet, supernet.encode_text, config.text) if config.text.kind == "transformer" else None


class _View(nn.Module):
    def __init__(self, supernet: ElasticCLIP, encode: Any, tower: Any):
        super().__init__()
        self.supernet, self._encode, self._tower = supernet, encode, tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x, self._tower)

