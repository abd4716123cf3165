"""Towers: the one thing every cost function takes.

A ``Tower`` is a named module plus a function that makes a fixed example input:
the image tower maps (B, 3, H, W) float32 images to (B, embed_dim) unnormalised
embeddings; the text tower maps (B, context_length) int64 token ids to (B, embed_dim).
Builders turn an open_clip model, a StudentConfig or a spec string into towers.
"""
from __future__ import annotations

import contextlib
import difflib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dime_nas.student import StudentConfig, build_image_tower, build_text_tower

TOWER_NAMES = ("image", "text")


@dataclass
class Tower:
    """A model half whose cost is measured on its own.

    Attributes:
        name: "image" or "text".
        module: maps ``example_input(B)`` to (B, embed_dim) unnormalised embeddings.
        example_input: batch size -> a fixed, deterministic input tensor.
    """

    name: str
    module: nn.Module
    example_input: Callable[[int], torch.Tensor]

    def __post_init__(self) -> None:
        if self.name not in TOWER_NAMES:
            raise ValueError(f"tower name must be one of {TOWER_NAMES}, got {self.name!r}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape (without the batch dimension)."""
        return tuple(self.example_input(1).shape[1:])

    @property
    def input_dtype(self) -> torch.dtype:
        return self.example_input(1).dtype


# ---- example inputs ---------------------------------------------------------------------

def image_input_fn(image_size: int | tuple[int, int]) -> Callable[[int], torch.Tensor]:
    """Fixed normal-noise images of ``image_size`` (seeded by batch size, so repeatable)."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size[-2:])

    def make(batch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1000 + batch)
        return torch.randn(batch, 3, h, w, generator=gen)

    return make


def text_input_fn(context_length: int, vocab_size: int) -> Callable[[int], torch.Tensor]:
    """Fixed token rows shaped like tokenizer output: SOT, words, EOT, zero padding.

    The end token is the largest id (CLIP's EOT), so argmax pooling finds it.
    """
    sot, eot = vocab_size - 2, vocab_size - 1

    def make(batch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(2000 + batch)
        tokens = torch.zeros(batch, context_length, dtype=torch.int64)
        for row in range(batch):
            n = int(torch.randint(1, context_length - 1, (1,), generator=gen))
            tokens[row, 0] = sot
            tokens[row, 1:n] = torch.randint(1, sot, (n - 1,), generator=gen)
            tokens[row, n] = eot
        return tokens

    return make


# ---- builders ----------------------------------------------------------------------------

class _CLIPText(nn.Module):
    """``CLIP.encode_text`` as a module holding only the text weights.

    open_clip's ``CLIP`` keeps its text parts at the top level next to ``visual``; this
    wrapper re-registers those parts (not ``visual`` nor the logit scale/bias) so its
    parameters are the text tower's, and runs open_clip's own ``encode_text`` on them.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._encode = type(model).encode_text
        for name, child in model.named_children():
            if name != "visual":
                self.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            if name not in ("logit_scale", "logit_bias"):
                self.register_parameter(name, param)
        for name, buf in model.named_buffers(recurse=False):
            self.register_buffer(name, buf, persistent=False)
        for name in ("context_length", "vocab_size", "text_pool_type", "text_eos_id"):
            setattr(self, name, getattr(model, name, None))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self._encode(self, text)


def _image_size(visual: nn.Module) -> int | tuple[int, int]:
    size = getattr(visual, "image_size", None)
    if size is None:
        raise ValueError(f"cannot tell the input size of image tower {type(visual).__name__}")
    return size if isinstance(size, int) else tuple(size)


def _text_tower(module: nn.Module) -> Tower:
    ctx, vocab = getattr(module, "context_length", None), getattr(module, "vocab_size", None)
    if not ctx or not vocab:
        raise ValueError(f"cannot tell context_length/vocab_size of text tower {type(module).__name__}")
    return Tower("text", module, text_input_fn(int(ctx), int(vocab)))


def towers_from_open_clip(model: nn.Module) -> dict[str, Tower]:
    """Image and text towers of an open_clip ``CLIP`` or ``CustomTextCLIP``."""
    towers = {"image": Tower("image", model.visual, image_input_fn(_image_size(model.visual)))}
    text = getattr(model, "text", None)
    if isinstance(text, nn.Module):  # CustomTextCLIP: encode_text is self.text(...)
        towers["text"] = _text_tower(text)
    elif hasattr(model, "transformer") and hasattr(model, "token_embedding"):
        towers["text"] = _text_tower(_CLIPText(model))
    return towers


def towers_from_student(config: StudentConfig,
                        teacher_text_cfg: dict[str, Any] | None = None) -> dict[str, Tower]:
    """Towers of a student (random init).

    A student with ``text.kind == "teacher"`` runs the teacher's text tower: it is built
    from ``teacher_text_cfg`` when given, else left out (only the image tower counts).
    """
    visual = build_image_tower(config)
    towers = {"image": Tower("image", visual, image_input_fn(_image_size(visual)))}
    if config.text.kind == "transformer":
        towers["text"] = _text_tower(build_text_tower(config))
    elif teacher_text_cfg is not None:
        from open_clip.model import CLIPTextCfg, _build_text_tower

        towers["text"] = _text_tower(_build_text_tower(config.embed_dim, CLIPTextCfg(**teacher_text_cfg)))
    return towers


def resolve_model(spec: str, teacher_text_cfg: dict[str, Any] | None = None) -> tuple[str, dict[str, Tower]]:
    """Towers for an open_clip model name (random init) or a StudentConfig JSON path.

    Returns:
        (name, towers): the model name, or the JSON file's stem, and its towers.

    Raises:
        FileNotFoundError: a JSON path that does not exist.
        ValueError: an invalid StudentConfig JSON, or an unknown open_clip name (the
            message lists close matches).
    """
    path = Path(spec)
    if spec.endswith(".json") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"StudentConfig JSON not found: {spec}")
        try:
            config = StudentConfig.load(path)
        except (json.JSONDecodeError, ValueError, TypeError) as err:
            raise ValueError(f"{spec} is not a valid StudentConfig JSON: {err}") from err
        return path.stem, towers_from_student(config, teacher_text_cfg)

    import open_clip

    names = open_clip.list_models()
    if spec not in names:
        close = difflib.get_close_matches(spec, names, n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ValueError(f"unknown open_clip model {spec!r} (and no such JSON file).{hint}")
    model = open_clip.create_model(spec, pretrained=None, pretrained_text=False)
    return spec, towers_from_open_clip(model.eval())


# ---- how cost code runs a tower -------------------------------------------------------------

@contextlib.contextmanager
def tracing_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, no grad, and the fused MHA fast path off; all restored on exit.

    The fast path (``aten::_native_multi_head_attention``) is invisible to MAC counters
    and breaks the TorchScript ONNX exporter, so tracing runs the plain ops instead.
    """
    was_training = module.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    module.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            yield module
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        module.train(was_training)
