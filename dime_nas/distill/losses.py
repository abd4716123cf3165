"""DIME-FM distillation losses: pure functions on embedding tensors.

The objective of Sun et al. (ICCV 2023) as in the authors' released implementation.

All functions take unnormalised (B, D) embeddings and L2-normalise them. Image and
sentence batches are independent (unpaired) and may differ in size. Teacher tensors
are detached, so gradients reach only the student. Losses come back as named dicts.

Conventions, as in the authors' released implementation:

- ``logits(a, b) = 100 · a @ b.T`` (fixed scale 100, no learnt temperature);
- ``KL_T(t, s) = KLDiv(batchmean)(log_softmax(s / T), softmax(t / T))``, i.e.
  KL(teacher ‖ student) per row, averaged over rows, without a T² factor.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOGIT_SCALE = 100.0


class NonFiniteLossError(ValueError):
    """A loss term became NaN or infinite during training."""

    def __init__(self, step: int, term: str, value: float) -> None:
        self.step = step
        self.term = term
        self.value = value
        super().__init__(f"non-finite loss at step {step}: term {term!r} = {value}")


def _logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Similarity logits of normalised rows: ``100 · a @ b.T``."""
    return LOGIT_SCALE * a @ b.T


def kl_t(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of row-wise softmaxes at ``temperature``, mean over rows.

    Args:
        teacher_logits: (N, M) target logits.
        student_logits: (N, M) logits being trained.
        temperature: softmax temperature T; no T² rescaling is applied.

    Returns:
        A scalar tensor.
    """
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,  # log-space target: exact and stable for peaked teachers
    )


def dime_fm_losses(
    student_image: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    student_text: torch.Tensor | None = None,
    *,
    w_vl: float = 0.7,
    w_pvl: float = 0.3,
    w_udist: float = 0.0,
    t_vl: float = 1.0,
    t_pvl: float = 3.0,
    t_udist: float = 7.0,
    w_text_vl: float = 0.7,
    w_text_pvl: float = 0.3,
) -> dict[str, torch.Tensor]:
    """The DIME-FM loss terms for one step.

    Args:
        student_image: (B_i, D) student image embeddings.
        teacher_image: (B_i, D) teacher embeddings of the same images (cached).
        teacher_text: (B_t, D) teacher embeddings of an independent sentence batch.
        student_text: optional (B_t, D) student embeddings of those sentences, for a
            student with its own text tower; adds the mirrored ``text_vl``/``text_pvl``.
        w_vl, w_pvl, w_udist: weights of VL, P-VL and UDist in ``total``.
        t_vl, t_pvl, t_udist: their softmax temperatures (``t_vl`` also for ``text_vl``,
            ``t_pvl`` for ``text_pvl``).
        w_text_vl, w_text_pvl: weights of the student-text terms in ``total``.

    Returns:
        Dict with ``vl``, ``pvl``, ``udist``, ``total`` (and ``text_vl``, ``text_pvl``
        when ``student_text`` is given). Every term is returned, even at weight 0.
    """
    s_i = F.normalize(student_image, dim=-1)
    t_i = F.normalize(teacher_image.detach(), dim=-1)
    t_t = F.normalize(teacher_text.detach(), dim=-1)

    # Teacher-side similarity matrices, shared between terms.
    t_it = _logits(t_i, t_t)
    t_ii = _logits(t_i, t_i)

    out: dict[str, torch.Tensor] = {}
    # Image->sentence over the sentence batch, plus sentence->image over the image batch.
    out["vl"] = kl_t(t_it, _logits(s_i, t_t), t_vl) + kl_t(t_it.T, _logits(t_t, s_i), t_vl)
    # Teacher image embeddings act as pseudo-sentences.
    out["pvl"] = 2.0 * kl_t(t_ii, _logits(s_i, t_i), t_pvl)
    # Image-image structure of the student against the teacher's.
    out["udist"] = 2.0 * kl_t(t_ii, _logits(s_i, s_i), t_udist)
    total = w_vl * out["vl"] + w_pvl * out["pvl"] + w_udist * out["udist"]

    if student_text is not None:
        text = dime_fm_text_losses(student_text, teacher_image, teacher_text, w_text_vl=w_text_vl,
                                   w_text_pvl=w_text_pvl, t_vl=t_vl, t_pvl=t_pvl)
        out["text_vl"], out["text_pvl"] = text["text_vl"], text["text_pvl"]
        total = total + text["total"]

    out["total"] = total
    return out


def dime_fm_text_losses(student_text: torch.Tensor, teacher_image: torch.Tensor, teacher_text: torch.Tensor, *,
                        w_text_vl: float = 0.7, w_text_pvl: float = 0.3, t_vl: float = 1.0, t_pvl: float = 3.0
                        ) -> dict[str, torch.Tensor]:
    """The student-text terms alone: the mirror of VL and P-VL for a student's own text tower.

    ``text_vl``: sentence->image over the image batch plus image->sentence over the sentence
    batch, against the teacher's; ``text_pvl``: the teacher's sentence embeddings act as
    pseudo-images. Returns ``text_vl``, ``text_pvl`` and their weighted ``total``.
    """
    s_t = F.normalize(student_text, dim=-1)
    t_i = F.normalize(teacher_image.detach(), dim=-1)
    t_t = F.normalize(teacher_text.detach(), dim=-1)
    t_it = _logits(t_i, t_t)
    out = {"text_vl": kl_t(t_it.T, _logits(s_t, t_i), t_vl) + kl_t(t_it, _logits(t_i, s_t), t_vl),
           "text_pvl": 2.0 * kl_t(_logits(t_t, t_t), _logits(s_t, t_t), t_pvl)}
    out["total"] = w_text_vl * out["text_vl"] + w_text_pvl * out["text_pvl"]
    return out


def feature_distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> dict[str, torch.Tensor]:
    """Plain paired feature-matching baseline on L2-normalised embeddings.

    Args:
        student: (B, D) student embeddings.
        teacher: (B, D) teacher embeddings of the same inputs (detached).
        kind: ``"cosine"`` (mean of 1 − cos) or ``"mse"`` (mean over rows of the
            squared distance between unit vectors, summed over D).

    Returns:
        Dict with ``total`` and the term named by ``kind``.
    """
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher.detach(), dim=-1)
    if kind == "cosine":
        loss = (1.0 - (s * t).sum(dim=-1)).mean()
    elif kind == "mse":
        loss = (s - t).pow(2).sum(dim=-1).mean()
    else:
        raise ValueError(f"kind must be 'cosine' or 'mse', got {kind!r}")
    return {kind: loss, "total": loss}


def check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    """Raise :class:`NonFiniteLossError` if any loss term is NaN or infinite.

    Args:
        losses: named loss terms (scalar tensors or floats).
        step: training step, for the error message.
    """
    for term, value in losses.items():
        v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        if not math.isfinite(v):
            raise NonFiniteLossError(step, term, v)
