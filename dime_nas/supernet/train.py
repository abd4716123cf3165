"""Training the supernet once, from the teacher-feature cache, with DIME-FM's losses.

Each step draws a batch of images and an independent batch of sentences (as a student's
run does) and trains several subnets on it by the sandwich rule: the largest, the
smallest, and ``random_subnets`` drawn by the space's own distribution, their gradients
summed before one optimiser step. An image subnet learns DIME-FM's image terms against the
teacher's cached embeddings; a student text subnet learns the mirrored text terms; the two
towers share no loss, so each step trains image and text subnets side by side. With
``inplace_distill`` the smaller image subnets also learn the largest one's embeddings
(BigNAS's in-place distillation). The teacher never runs here.

Checkpoints hold the weights, optimiser, schedule, data positions and every random
state, so a killed run resumed from its checkpoint continues bit for bit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import compact_vocab
from ..distill.losses import check_finite, dime_fm_losses, dime_fm_text_losses
from ..distill.trainer import IndexStream, progress_bar, resolve_device
from ..fs import atomic_path
from ..optim import param_groups, warmup_cosine
from ..preprocess import corpus_inputs, fit_context
from ..student import StudentConfig
from .elastic import ElasticCLIP, SupernetShape

CHECKPOINT_NAME = "supernet.pt"
LOG_EVERY = 10  # steps between loss-curve points


@dataclass
class SupernetRun:
    """What a supernet training did."""

    steps: int = 0  # optimiser steps completed
    seconds: float = 0.0  # wall time of the training loop (evaluation excluded)
    curve: list[dict[str, float]] = field(default_factory=list)  # per logged step: step, lr, loss of each kind
    subnets_trained: int = 0  # subnet forward-backward passes (image and text)
    device: str = "cpu"


def extreme_students(space: Any, embed_dim: int) -> tuple[StudentConfig, StudentConfig]:
    """The largest and the smallest students of ``space`` (each dimension at its largest or smallest,
    the patch size the other way, so the largest has the most tokens; a student text tower in both)."""
    return space.suggest(_ExtremeTrial(largest=True), embed_dim), space.suggest(_ExtremeTrial(largest=False), embed_dim)


class _ExtremeTrial:
    """A stand-in for an Optuna trial that answers each dimension with its largest (or smallest) allowed value."""

    def __init__(self, largest: bool):
        self.largest = largest

    def _pick(self, name: str, choices: list) -> Any:
        if name.startswith("text.kind"):
            return "transformer" if "transformer" in choices else choices[0]
        if not all(isinstance(c, (int, float)) for c in choices):
            return choices[0]
        big = self.largest != name.startswith("image.vit.patch_size")  # smaller patches: more tokens
        return max(choices) if big else min(choices)

    def suggest_categorical(self, name, choices):
        return self._pick(name, list(choices))

    def suggest_int(self, name, low, high, step=1, log=False):
        return self._pick(name, list(range(low, high + 1, step)))

    def suggest_float(self, name, low, high, step=None, log=False):
        return self._pick(name, [low, high])


def train_supernet(space: Any, cache: Any, settings: Any, losses: Any, *, checkpoint_dir: str | Path,
                   resume: bool = True, progress: bool = False, stop_after: int | None = None
                   ) -> tuple[ElasticCLIP, SupernetRun]:
    """Train (or continue) the supernet of ``space`` on ``cache`` under ``settings`` (a SupernetConfig).

    Args:
        losses: the DIME-FM weights and temperatures (a LossConfig; kind dime-fm).
        checkpoint_dir: where ``supernet.pt`` is written every ``settings.checkpoint_every``
            steps and at the end (atomically: a kill leaves the previous one).
        resume: continue from the checkpoint there, if any.
        stop_after: stop (with a checkpoint) after this many steps of this call, as a kill
            would; for tests of resuming.

    Raises:
        NonFiniteLossError: a loss became NaN/inf (names the step, the term and the subnet);
            the checkpoints already written are left as they are.
    """
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    net = ElasticCLIP(SupernetShape.of_space(space, cache.embed_dim))
    largest, smallest = extreme_students(space, cache.embed_dim)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME
    state = torch.load(ckpt, map_location=device, weights_only=False) if resume and ckpt.is_file() else None
    if state is not None:
        net.load_state_dict(state["model"])
    net.to(device).train()
    if net.text is not None:
        compact_vocab.compact(net.text, compact_vocab.used_token_ids(cache, net.shape.vocab_size))
    optimizer = torch.optim.AdamW(param_groups(net, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.999),
                                  fused=device == "cpu" or device.startswith("cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(settings.warmup_steps, settings.steps))
    images = IndexStream(cache.n_images, settings.seed * 2 + 1)
    texts = IndexStream(cache.n_texts, settings.seed * 2 + 2)
    draws = np.random.default_rng([settings.seed, 11])  # the random subnets of each step
    run = SupernetRun(device=device)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        images.load(state["images"])
        texts.load(state["texts"])
        draws.bit_generator.state = state["draws"]
        torch.set_rng_state(state["torch_rng"])
        run = state["run"]
    mean, std = cache.mean_std
    inputs: dict[int, Any] = {}  # image size -> corpus indices -> pixels
    bar = progress_bar(progress, settings.steps, run.steps, "supernet")
    start, elapsed0, first = time.time(), run.seconds, run.steps
    try:
        while run.steps < settings.steps and (stop_after is None or run.steps - first < stop_after):
            step = run.steps
            students = [largest, smallest] + [space.sample(draws, cache.embed_dim)
                                              for _ in range(settings.random_subnets)]
            idx_i, idx_t = images.take(settings.batch_size), texts.take(settings.text_batch_size)
            t_img = torch.from_numpy(cache.image_emb.take(idx_i).astype(np.float32)).to(device)
            t_txt = torch.from_numpy(cache.text_emb.take(idx_t).astype(np.float32)).to(device)
            optimizer.zero_grad(set_to_none=True)
            logged = _train_subnets(net, students, idx_i, idx_t, t_img, t_txt, cache, inputs, (mean, std), losses,
                                    settings.inplace_distill, device, step)
            run.subnets_trained += logged.pop("subnets")
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            run.steps = step + 1
            if step % LOG_EVERY == 0 or run.steps == settings.steps:
                run.curve.append({"step": step, "lr": scheduler.get_last_lr()[0], **logged})
            bar.update(1)
            bar.set_postfix(loss=f"{logged['largest']:.3f}", refresh=False)
            if run.steps % settings.checkpoint_every == 0:
                run.seconds = elapsed0 + time.time() - start
                _save(ckpt, net, optimizer, scheduler, images, texts, draws, run)
    finally:
        bar.close()
    run.seconds = elapsed0 + time.time() - start
    _save(ckpt, net, optimizer, scheduler, images, texts, draws, run)
    if net.text is not None:
        compact_vocab.expand(net.text)
    return net.eval(), run


def _train_subnets(net: ElasticCLIP, students: list[StudentConfig], idx_i: np.ndarray, idx_t: np.ndarray,
                   t_img: torch.Tensor, t_txt: torch.Tensor, cache: Any, inputs: dict[int, Any],
                   mean_std: tuple, losses: Any, inplace: bool, device: str, step: int) -> dict[str, float]:
    """Forward and backward of each student's image subnet and text subnet; gradients accumulate.

    Returns the loss of each (``largest``, ``smallest``, ``random``: mean of the drawn ones) and
    the number of subnets trained.
    """
    weights = dict(w_vl=losses.w_vl, w_pvl=losses.w_pvl, w_udist=losses.w_udist, t_vl=losses.t_vl,
                   t_pvl=losses.t_pvl, t_udist=losses.t_udist)
    text_weights = dict(w_text_vl=losses.w_text_vl, w_text_pvl=losses.w_text_pvl, t_vl=losses.t_vl,
                        t_pvl=losses.t_pvl)
    per_student, count, biggest = [], 0, None
    for i, student in enumerate(students):
        v = student.vision
        if v.image_size not in inputs:
            inputs[v.image_size] = corpus_inputs(cache, v.image_size, *mean_std)
        s_img = net.encode_image(inputs[v.image_size](idx_i).to(device), v)
        terms = {"image": dime_fm_losses(s_img, t_img, t_txt, **weights)["total"]}
        if i == 0:
            biggest = s_img.detach()
        elif inplace:  # the largest subnet's embeddings as a second teacher
            terms["inplace"] = dime_fm_losses(s_img, biggest, t_txt, **weights)["total"]
        if student.text.kind == "transformer":
            tokens = fit_context(cache.text_tokens.take(idx_t), student.text.context_length).to(device)
            terms["text"] = dime_fm_text_losses(net.encode_text(tokens, student.text), t_img, t_txt,
                                                **text_weights)["total"]
            count += 1
        check_finite({f"{name} ({student.describe()})": value for name, value in terms.items()}, step)
        total = sum(terms.values())
        total.backward()
        count += 1
        per_student.append(float(total.detach()))
    return {"largest": per_student[0], "smallest": per_student[1],
            "random": float(np.mean(per_student[2:])) if len(per_student) > 2 else float("nan"), "subnets": count}


def _save(path: Path, net: ElasticCLIP, optimizer, scheduler, images, texts, draws, run: SupernetRun) -> None:
    """Atomic: a kill while saving leaves the previous checkpoint in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"model": compact_vocab.full_state_dict(net), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "images": images.state(), "texts": texts.state(),
                    "draws": draws.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "shape": net.shape.__dict__, "run": run}, tmp)


def load_supernet(path: str | Path, device: str = "cpu") -> ElasticCLIP:
    """The supernet saved in a checkpoint folder (or file), in eval mode."""
    path = Path(path)
    ckpt = path / CHECKPOINT_NAME if path.is_dir() else path
    state = torch.load(ckpt, map_location=device, weights_only=False)
    net = ElasticCLIP(SupernetShape(**state["shape"]))
    net.load_state_dict(state["model"])
    return net.to(device).eval()
