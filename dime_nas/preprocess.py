"""Model inputs from stored data, for students and teachers alike: uint8 pixels ->
normalised tensors at a model's resolution, and token ids -> a model's context length."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .tokens import EOT_TOKEN

# The pixel normalisation of OpenAI's CLIP, which open_clip's models use by default.
CLIP_MEAN: tuple[float, float, float] = tuple(OPENAI_DATASET_MEAN)
CLIP_STD: tuple[float, float, float] = tuple(OPENAI_DATASET_STD)


def to_model_input(pixels: np.ndarray, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                   augment: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, image_size, image_size) float, normalised by ``mean`` and ``std``."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255.0)
    if augment:
        x = _random_resized_crop_flip(x, generator)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


# Whole corpora converted once per resolution (the demo's: 37-147 MB each), least recently used dropped
_CONVERTED: OrderedDict[tuple, torch.Tensor] = OrderedDict()
CONVERTED_KEEP = 3
CONVERTED_MAX_BYTES = 512 * 2**20


def corpus_inputs(cache: Any, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                  augment: bool = False, generator: torch.Generator | None = None
                  ) -> Callable[[np.ndarray], torch.Tensor]:
    """A function from corpus indices to model inputs, as ``to_model_input`` would give them.

    Without augmentation a small corpus is converted once at ``image_size`` and kept for the
    trials that follow (the same values: each image is resized on its own); a large one, or
    an augmented run, converts each batch as it is drawn.
    """
    n = len(cache.pixels)
    if augment or n * 3 * image_size * image_size * 4 > CONVERTED_MAX_BYTES:
        return lambda idx: to_model_input(cache.pixels.take(idx), image_size, mean, std, augment, generator)
    key = (str(getattr(cache, "root", id(cache))), n, image_size, tuple(mean), tuple(std))
    table = _CONVERTED.get(key)
    if table is None:
        table = torch.empty(n, 3, image_size, image_size)
        for i in range(0, n, 256):
            table[i:i + 256] = to_model_input(cache.pixels.take(np.arange(i, min(n, i + 256))), image_size, mean, std)
        _CONVERTED[key] = table
        while len(_CONVERTED) > CONVERTED_KEEP:
            _CONVERTED.popitem(last=False)
    _CONVERTED.move_to_end(key)
    return lambda idx: table[torch.from_numpy(np.asarray(idx, dtype=np.int64))]


def _random_resized_crop_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Per-image random crop (60-100 % of the side) resized back, and a horizontal flip half the time."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    scales = torch.empty(n).uniform_(0.6, 1.0, generator=generator)
    offsets = torch.rand(n, 2, generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    for i in range(n):
        ch, cw = max(1, int(h * scales[i])), max(1, int(w * scales[i]))
        top, left = int(offsets[i, 0] * (h - ch)), int(offsets[i, 1] * (w - cw))
        crop = x[i:i + 1, :, top:top + ch, left:left + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        out[i] = crop[0].flip(-1) if flips[i] else crop[0]
    return out


def fit_context(tokens: np.ndarray, context_length: int) -> torch.Tensor:
    """Cut or zero-pad token ids to ``context_length``; a cut sentence keeps its end-of-text token."""
    t = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    if t.shape[1] == context_length:
        return t
    if t.shape[1] < context_length:
        return F.pad(t, (0, context_length - t.shape[1]))
    cut = t[:, :context_length].clone()
    lost_eot = (t[:, context_length:] == EOT_TOKEN).any(dim=1)
    cut[lost_eot, -1] = EOT_TOKEN
    return cut
