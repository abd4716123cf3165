"""DIME-FM distillation: the losses (pure functions on embeddings) and the trainer.

``from dime_nas.distill import dime_fm_losses`` is the documented entry to the objective;
the trainer lives in ``dime_nas.distill.trainer``.
"""
from __future__ import annotations

from .losses import NonFiniteLossError, dime_fm_losses, feature_distill_loss, kl_t

__all__ = ["NonFiniteLossError", "dime_fm_losses", "feature_distill_loss", "kl_t"]
