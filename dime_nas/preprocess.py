"""Model inputs from stored data, for students and teachers alike: uint8 pixels ->
normalised tensors at a model's resolution, and token ids -> a model's context length."""
from __future__ import annotations

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
