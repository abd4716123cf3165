"""Zero-shot classification the CLIP way, shared by the student evaluation, the feature
cache and the demo teacher's build: each class is the ensemble of its prompts' text
embeddings, and an image's prediction is the class most similar to it."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def prompt_ensemble(prompt_emb: torch.Tensor) -> torch.Tensor:
    """(C, T, D) text embeddings of T prompts per class -> (C, D) class embeddings.

    CLIP's prompt ensembling: the mean of the L2-normalised prompt embeddings, renormalised.
    """
    return F.normalize(F.normalize(prompt_emb.float(), dim=-1).mean(dim=1), dim=-1)


def top_k_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows of ``scores`` (N, C) whose label is among their ``k`` highest classes."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()
