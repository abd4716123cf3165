"""Train a text tower (a student's, or the demo teacher's) on only the token rows its data uses.

The CLIP vocabulary has 49,408 tokens; a corpus uses a few thousand (ShapesWorld: a
few dozen). A full embedding makes every step allocate, clip and update a dense
49,408 x width gradient. Rows that no batch ever touches get zero gradient, and AdamW
with no weight decay on embeddings (our rule) leaves them exactly unchanged, so
training the used rows alone is the same computation, minus the waste. The full
embedding is rebuilt (untouched rows as initialised) before the model leaves the
trainer or is checkpointed.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class CompactEmbedding(nn.Module):
    """An nn.Embedding restricted to ``ids``; other ids read row 0 of the compact table."""

    def __init__(self, full: nn.Embedding, ids: torch.Tensor):
        super().__init__()
        self.num_embeddings = full.num_embeddings
        self.register_buffer("ids", ids.long(), persistent=False)
        lookup = torch.zeros(full.num_embeddings, dtype=torch.long)
        lookup[ids] = torch.arange(len(ids))
        self.register_buffer("lookup", lookup, persistent=False)
        self.weight = nn.Parameter(full.weight.detach()[ids].clone())
        self._full = full.weight.detach().clone()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.lookup[tokens], self.weight)

    def expanded(self) -> nn.Embedding:
        """The full embedding with the trained rows written back."""
        out = nn.Embedding(self.num_embeddings, self.weight.shape[1])
        weight = self._full.clone().to(self.weight.device)
        weight[self.ids] = self.weight.detach()
        out.weight.data.copy_(weight)
        return out


def used_token_ids(cache: Any, vocab_size: int) -> torch.Tensor:
    """Sorted ids appearing in the cached sentences, prompts and retrieval captions."""
    used = np.zeros(vocab_size, dtype=bool)
    tokens = cache.text_tokens
    for start in range(0, len(tokens), 65536):
        used[np.unique(tokens.take(np.arange(start, min(start + 65536, len(tokens)))))] = True
    for task in cache.tasks("all"):
        used[np.unique(task.prompt_tokens)] = True
    retrieval = cache.retrieval("all")
    if retrieval is not None:
        used[np.unique(retrieval.text_tokens)] = True
    used[0] = True  # padding
    return torch.from_numpy(np.flatnonzero(used))


def compact(text_tower: nn.Module, ids: torch.Tensor) -> None:
    text_tower.token_embedding = CompactEmbedding(text_tower.token_embedding, ids)


def expand(text_tower: nn.Module) -> None:
    if isinstance(text_tower.token_embedding, CompactEmbedding):
        text_tower.token_embedding = text_tower.token_embedding.expanded()


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as if its embedding were full (the checkpoint format)."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, CompactEmbedding):
            state[f"{name}.weight"] = module.expanded().weight.detach()
    return state
