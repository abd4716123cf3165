"""A subnet of the supernet as a standalone student: the towers ``build_image_tower`` /
``build_text_tower`` build for its StudentConfig, with the supernet's weights sliced in.

Same parameter names and shapes as a student built from scratch, and the same embeddings
as the supernet's own forward for that configuration, so the subnet's cost, export,
loading in plain open_clip and full distillation need nothing new.
"""
from __future__ import annotations

import torch

from .. import compact_vocab
from ..errors import ConfigError
from ..student import StudentConfig, TextTowerConfig, VisionTowerConfig
from .elastic import ElasticCLIP, in_proj_rows


@torch.no_grad()
def extract(supernet: ElasticCLIP, config: StudentConfig):
    """The subnet ``config`` as the trainer's ``StudentTowers`` (``visual``, ``text`` or None), on the CPU.

    Raises:
        ConfigError: ``config`` does not fit in this supernet (a timm trunk, or a dimension
            beyond the supernet's largest).
    """
    from ..distill.trainer import StudentTowers

    check_fits(supernet, config)
    towers = StudentTowers(config)
    towers.visual.load_state_dict(_vision_state(supernet, config.vision))
    if towers.text is not None:
        towers.text.load_state_dict(_text_state(supernet, config.text))
    return towers


def check_fits(supernet: ElasticCLIP, config: StudentConfig) -> None:
    """Raise a ConfigError naming the dimension when ``config`` is not a subnet of ``supernet``."""
    s, v, t = supernet.shape, config.vision, config.text
    if v.kind != "vit":
        raise ConfigError(f"a supernet holds ViT image towers only, not {config.describe()}", key="search.evaluator")
    too_big = [(name, have, most) for name, have, most in (
        ("image layers", v.layers, s.layers), ("image width", v.width, s.width),
        ("image MLP hidden", int(v.width * v.mlp_ratio), int(s.width * s.mlp_ratio)),
        ("patch size", v.patch_size, s.kernel), ("token grid", v.image_size // v.patch_size, s.grid),
        ("embedding width", config.embed_dim, s.embed_dim), ("embedding width", s.embed_dim, config.embed_dim))
        if have > most]
    if t.kind == "transformer":
        if not s.text_layers:
            raise ConfigError(f"{config.describe()}: this supernet has no student text tower", key="search.evaluator")
        too_big += [(name, have, most) for name, have, most in (
            ("text layers", t.layers, s.text_layers), ("text width", t.width, s.text_width),
            ("text MLP hidden", int(t.width * t.mlp_ratio), int(s.text_width * s.text_mlp_ratio)),
            ("context length", t.context_length, s.context_length)) if have > most]
    if too_big:
        name, have, most = too_big[0]
        raise ConfigError(f"{config.describe()} is not a subnet of this supernet: {name} {have} > {most}",
                          key="search.evaluator")


def _vision_state(supernet: ElasticCLIP, vision: VisionTowerConfig) -> dict[str, torch.Tensor]:
    v, w = supernet.visual, vision.width
    state = {"conv1.weight": supernet.patch_kernel(vision), "class_embedding": v.class_embedding[:w],
             "positional_embedding": supernet.positional_embedding(vision), "proj": v.proj[:w]}
    state.update(_norm("ln_pre", v.ln_pre, w))
    state.update(_norm("ln_post", v.ln_post, w))
    for i, block in enumerate(v.transformer.resblocks[:vision.layers]):
        state.update(_block_state(f"transformer.resblocks.{i}.", block, w, int(w * vision.mlp_ratio),
                                  supernet.shape.width))
    return {k: t.detach().clone().cpu() for k, t in state.items()}


def _text_state(supernet: ElasticCLIP, text: TextTowerConfig) -> dict[str, torch.Tensor]:
    t, w = supernet.text, text.width
    full = compact_vocab.full_state_dict(t)  # the whole vocabulary, also when training on its used rows
    state = {"token_embedding.weight": full["token_embedding.weight"][:, :w],
             "positional_embedding": t.positional_embedding[:text.context_length, :w],
             "text_projection": t.text_projection[:w]}
    state.update(_norm("ln_final", t.ln_final, w))
    for i, block in enumerate(t.transformer.resblocks[:text.layers]):
        state.update(_block_state(f"transformer.resblocks.{i}.", block, w, int(w * text.mlp_ratio),
                                  supernet.shape.text_width))
    return {k: x.detach().clone().cpu() for k, x in state.items()}


def _norm(name: str, norm: torch.nn.LayerNorm, w: int) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": norm.weight[:w], f"{name}.bias": norm.bias[:w]}


def _block_state(prefix: str, block: torch.nn.Module, w: int, hidden: int, full: int) -> dict[str, torch.Tensor]:
    attn, mlp = block.attn, block.mlp
    rows = in_proj_rows(full, w, attn.in_proj_weight.device)
    out = {"attn.in_proj_weight": attn.in_proj_weight[rows, :w], "attn.in_proj_bias": attn.in_proj_bias[rows],
           "attn.out_proj.weight": attn.out_proj.weight[:w, :w], "attn.out_proj.bias": attn.out_proj.bias[:w],
           "mlp.c_fc.weight": mlp.c_fc.weight[:hidden, :w], "mlp.c_fc.bias": mlp.c_fc.bias[:hidden],
           "mlp.c_proj.weight": mlp.c_proj.weight[:w, :hidden], "mlp.c_proj.bias": mlp.c_proj.bias[:w]}
    out.update(_norm("ln_1", block.ln_1, w))
    out.update(_norm("ln_2", block.ln_2, w))
    return {prefix + k: v for k, v in out.items()}
