"""Evaluation of a student on cached evaluation data (no teacher runs here).

- zero-shot classification per task (prompt-ensemble class embeddings, top-1/top-5);
- image<->text retrieval (R@1, R@5) on a paired set;
- agreement with the teacher: how often the student's zero-shot prediction equals the
  teacher's, and KL(teacher || student) of their class-similarity distributions.
Class and caption embeddings come from the student's text tower when it has one,
otherwise from the teacher's (cached).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .distill.losses import LOGIT_SCALE
from .preprocess import fit_context, to_model_input
from .zero_shot import prompt_ensemble, top_k_accuracy


@torch.no_grad()
def embed_images(image_tower: torch.nn.Module, pixels: np.ndarray, image_size: int, mean, std,
                 batch_size: int = 256) -> torch.Tensor:
    """Normalised student embeddings of uint8 pixels (computed on the tower's device, returned on the CPU)."""
    device = _device_of(image_tower)
    out = [image_tower(to_model_input(pixels[i:i + batch_size], image_size, mean, std).to(device)).cpu()
           for i in range(0, len(pixels), batch_size)]
    return F.normalize(torch.cat(out).float(), dim=-1)


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device


def embed_tokens(text_tower: torch.nn.Module, tokens: np.ndarray, context_length: int,
                 batch_size: int = 256) -> torch.Tensor:
    """Normalised student embeddings of token ids (computed on the tower's device, returned on the CPU)."""
    return F.normalize(_text_outputs(text_tower, tokens, context_length, batch_size).float(), dim=-1)


@torch.no_grad()
def _text_outputs(text_tower: torch.nn.Module, tokens: np.ndarray, context_length: int,
                  batch_size: int = 256) -> torch.Tensor:
    device = _device_of(text_tower)
    return torch.cat([text_tower(fit_context(tokens[i:i + batch_size], context_length).to(device)).cpu()
                      for i in range(0, len(tokens), batch_size)])


def _class_embeddings(task: Any, text_tower: torch.nn.Module | None, context_length: int | None) -> torch.Tensor:
    if text_tower is None:
        return torch.from_numpy(task.class_emb).float()
    c, t, length = task.prompt_tokens.shape
    prompts = _text_outputs(text_tower, task.prompt_tokens.reshape(c * t, length), context_length)
    return prompt_ensemble(prompts.view(c, t, -1))


def _recall(sims: torch.Tensor, k: int) -> float:
    """Row i's match is column i."""
    k = min(k, sims.shape[1])
    return (sims.topk(k, dim=1).indices == torch.arange(len(sims))[:, None]).any(dim=1).float().mean().item()


@torch.no_grad()
def evaluate_student(image_tower: torch.nn.Module, cache: Any, image_size: int, text_tower: torch.nn.Module | None = None,
                     context_length: int | None = None, batch_size: int = 256, split: str = "val") -> dict[str, Any]:
    """All metrics of a student on one split of a FeatureCache's evaluation data.

    ``split``: "val" (the search-validation part: trials, pruning and selection see only
    it), "test" (held out for the final numbers of full runs) or "all".

    Returns a flat dict: ``accuracy`` (mean top-1 over in-distribution tasks),
    ``image_accuracy`` (the same against the teacher's class embeddings: the image tower
    alone, equal to ``accuracy`` for a student that uses the teacher's text tower),
    ``shifted_accuracy``, ``retrieval`` (mean R@1 of both directions), ``agreement``,
    ``teacher_kl``, and per-task ``task/<name>/top1``, ``top5``, ``agreement``, plus
    the teacher's own ``teacher/<name>/top1`` for reference.
    """
    was_training = [m.training for m in (image_tower, text_tower) if m is not None]
    image_tower.eval()
    if text_tower is not None:
        text_tower.eval()
    mean, std = cache.mean_std
    out: dict[str, Any] = {}
    ind, ind_image, shifted, agree, kls = [], [], [], [], []
    for task in cache.tasks(split):
        labels = torch.from_numpy(task.labels)
        s_img = embed_images(image_tower, task.pixels, image_size, mean, std, batch_size)
        s_logits = LOGIT_SCALE * s_img @ _class_embeddings(task, text_tower, context_length).T
        t_img = F.normalize(torch.from_numpy(task.image_emb).float(), dim=-1)
        teacher_classes = torch.from_numpy(task.class_emb).float()
        t_logits = LOGIT_SCALE * t_img @ teacher_classes.T
        top1 = top_k_accuracy(s_logits, labels, 1)
        if not task.shifted:
            ind_image.append(top1 if text_tower is None else top_k_accuracy(s_img @ teacher_classes.T, labels, 1))
        same = (s_logits.argmax(1) == t_logits.argmax(1)).float().mean().item()
        kl = F.kl_div(F.log_softmax(s_logits, 1), F.log_softmax(t_logits, 1), reduction="batchmean",
                      log_target=True).item()
        out.update({f"task/{task.name}/top1": top1, f"task/{task.name}/top5": top_k_accuracy(s_logits, labels, 5),
                    f"task/{task.name}/agreement": same,
                    f"teacher/{task.name}/top1": top_k_accuracy(t_logits, labels, 1)})
        (shifted if task.shifted else ind).append(top1)
        agree.append(same)
        kls.append(kl)
    if ind:
        out["accuracy"], out["image_accuracy"] = float(np.mean(ind)), float(np.mean(ind_image))
    if shifted:
        out["shifted_accuracy"] = float(np.mean(shifted))
    if agree:
        out["agreement"], out["teacher_kl"] = float(np.mean(agree)), float(np.mean(kls))
    r = cache.retrieval(split)
    if r is not None:
        img = embed_images(image_tower, r.pixels, image_size, mean, std, batch_size)
        txt = embed_tokens(text_tower, r.text_tokens, context_length, batch_size) if text_tower is not None \
            else F.normalize(torch.from_numpy(r.text_emb).float(), dim=-1)
        sims = img @ txt.T
        out.update({"retrieval/i2t_r1": _recall(sims, 1), "retrieval/i2t_r5": _recall(sims, 5),
                    "retrieval/t2i_r1": _recall(sims.T, 1), "retrieval/t2i_r5": _recall(sims.T, 5)})
        out["retrieval"] = (out["retrieval/i2t_r1"] + out["retrieval/t2i_r1"]) / 2
    for m, mode in zip((image_tower, text_tower), was_training):
        if m is not None:
            m.train(mode)
    return out


def evaluate_towers(towers: torch.nn.Module, cache: Any, split: str = "val") -> dict[str, Any]:
    """``evaluate_student`` of a trainer's ``StudentTowers`` (``visual``, ``text`` or None, ``config``).

    ``functools.partial(evaluate_towers, cache=cache)`` is the evaluation a distillation run takes.
    """
    text = towers.text
    return evaluate_student(towers.visual, cache, towers.config.vision.image_size, text,
                            towers.config.text.context_length if text is not None else None, split=split)
