"""DIME-FM distillation of one student from the teacher-feature cache.

Two independent streams feed each step: a batch of images (pixels + cached teacher
embeddings) and a batch of sentences (cached teacher embeddings, + token ids for a
student text tower). Each stream is reshuffled every epoch from its own seed; the
sentence stream cycles independently, as in DIME-FM. The teacher never runs here.

``distill`` serves both uses:
- a **short run** (a search trial): bounded by steps and/or seconds, nothing written;
- a **full run**: resumable checkpoints written atomically every N steps, with the
  model, optimiser, schedule, RNG and data positions, so ``resume=True`` continues
  bit-for-bit; under ``torchrun`` it uses DistributedDataParallel, each rank embedding
  its slice of the batch and the student embeddings gathered for the losses.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .. import compact_vocab
from ..fs import atomic_path
from ..optim import param_groups, warmup_cosine
from ..preprocess import corpus_inputs, fit_context
from ..student import StudentConfig, build_image_tower, build_text_tower
from .losses import check_finite, dime_fm_losses, feature_distill_loss

CHECKPOINT_NAME = "checkpoint.pt"
LOG_EVERY = 10  # steps between loss-curve points (and log.jsonl lines)


class StudentTowers(nn.Module):
    """The trainable parts of a student: its image tower and, if it has one, its text tower."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.config = config
        self.visual = build_image_tower(config)
        self.text = build_text_tower(config) if config.text.kind == "transformer" else None

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None = None):
        return self.visual(images), (self.text(tokens) if self.text is not None and tokens is not None else None)


@dataclass
class RunResult:
    """What a distillation run did and measured."""

    steps: int  # optimiser steps completed
    seconds: float  # wall time of the training loop (evaluation excluded)
    stopped_by: str  # "steps", "seconds"
    curve: list[dict[str, float]] = field(default_factory=list)  # per logged step: step, lr, loss terms
    evals: list[dict[str, Any]] = field(default_factory=list)  # intermediate evaluations (step + metrics)
    metrics: dict[str, Any] = field(default_factory=dict)  # final evaluation
    steps_per_second: float = 0.0
    device: str = "cpu"  # where it trained
    processes: int = 1  # ranks that trained it (torchrun world size)
    is_main: bool = True  # False on the other ranks of a torchrun job: they hold no evaluation


class IndexStream:
    """An endless, per-epoch reshuffled index stream with a resumable position."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.offset = n, seed, 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def take(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            part = self._perm[self.offset:self.offset + k]
            out.append(part)
            self.offset += len(part)
            k -= len(part)
            if self.offset >= self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._perm = self._permutation()
        return np.concatenate(out)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._perm = self._permutation()


def resolve_device(requested: str | None = None) -> str:
    """The device to train on: as requested, else the GPU when CUDA is available, else the CPU.

    "cuda" means this process's GPU: ``cuda:LOCAL_RANK`` under torchrun (as nanoGPT does),
    made the current device so NCCL and the model agree.

    Raises:
        ConfigError: a CUDA device is requested where CUDA is not available.
    """
    from ..errors import ConfigError

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r} asked for, but CUDA is not available here "
                              "(torch.cuda.is_available() is False)", key="distill.device")
        torch.cuda.set_device(torch.device(device))
    return device


def distill(config: StudentConfig, cache: Any, settings: Any, *, device: str | None = None,
            checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = False,
            evaluate: Callable[[StudentTowers], dict[str, Any]] | None = None, final_eval: bool = True,
            on_eval: Callable[[int, dict[str, Any]], None] | None = None,
            before_step: Callable[[], None] | None = None,
            initial: dict[str, Any] | None = None) -> tuple[StudentTowers, RunResult]:
    """Distil ``config`` from ``cache`` under ``settings`` (a DistillConfig).

    Args:
        checkpoint_dir: full runs: where resumable checkpoints go (every
            ``settings.checkpoint_every`` steps and at the end); None for short runs.
        resume: continue from ``checkpoint_dir``'s checkpoint if there is one.
        evaluate: scores the student (towers -> metrics, e.g. ``partial(evaluate_towers,
            cache=cache)``) every ``settings.eval_every`` steps and, with ``final_eval``,
            at the end into ``RunResult.metrics``; None: no evaluation.
        final_eval: evaluate at the end too (off when the caller scores the result itself).
        on_eval: called with (step, metrics) after each intermediate evaluation; it
            may raise (e.g. ``optuna.TrialPruned``) to stop the run.
        before_step: called before each optimiser step (e.g. to wait while a latency is timed).
        initial: a ``StudentTowers`` state dict to start from instead of a random initialisation
            (a supernet's weights for this student); a resumed checkpoint takes precedence.

        device: overrides ``settings.device`` (see ``resolve_device``).

    Raises:
        NonFiniteLossError: a loss term became NaN/inf; names the step and the term.
            Checkpoints already written are left untouched.
    """
    device = resolve_device(device or getattr(settings, "device", None))
    dist = _Distributed.from_env()
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    state = None
    if resume and ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
    run = _Run.set_up(config, cache, settings, device, dist, state["model"] if state is not None else initial)
    if state is not None:
        run.restore(state)
    result = run.result
    use_amp = device.startswith("cuda")
    if use_amp and settings.compile:
        run.wrapped = torch.compile(run.wrapped)
    log = _open_log(Path(checkpoint_dir), result.steps) if checkpoint_dir and dist.is_main else None
    bar = progress_bar(progress and dist.is_main, settings.steps, result.steps)
    start, elapsed0 = time.time(), result.seconds
    try:
        while result.steps < settings.steps:
            if settings.seconds is not None and elapsed0 + time.time() - start >= settings.seconds:
                result.stopped_by = "seconds"
                break
            step = result.steps
            if before_step is not None:
                before_step()
            losses = run.step(cache, settings, dist, use_amp)
            result.steps = step + 1
            if step % LOG_EVERY == 0 or result.steps == settings.steps:
                result.curve.append({"step": step, "lr": run.scheduler.get_last_lr()[0],
                                     **{k: float(v.detach()) for k, v in losses.items()}})
                if log is not None:
                    log.write(json.dumps(result.curve[-1]) + "\n")
                    log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{float(losses['total'].detach()):.4f}", refresh=False)
            if ckpt is not None and dist.is_main and result.steps % settings.checkpoint_every == 0:
                result.seconds = elapsed0 + time.time() - start
                run.save(ckpt)
            if (evaluate is not None and settings.eval_every and result.steps % settings.eval_every == 0
                    and result.steps < settings.steps):
                metrics = evaluate(run.model)
                result.evals.append({"step": result.steps, **metrics})
                if on_eval is not None:
                    on_eval(result.steps, metrics)
                run.model.train()
    finally:
        bar.close()
        if log is not None:
            log.close()
    result.seconds = elapsed0 + time.time() - start
    result.steps_per_second = result.steps / result.seconds if result.seconds > 0 else 0.0
    result.device, result.processes, result.is_main = device, dist.world, dist.is_main
    if ckpt is not None and dist.is_main:
        run.save(ckpt)
    model = run.finished_model()
    if evaluate is not None and final_eval and dist.is_main:
        result.metrics = average_last_evals(result.evals, evaluate(model), settings.average_last_evals)
    return model, result


@dataclass
class _Run:
    """One run's moving parts: what a step changes and a checkpoint holds, and how a step
    builds its batch from the cache."""

    model: StudentTowers
    wrapped: nn.Module  # the model as a step calls it (DDP, compiled)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    images: IndexStream
    texts: IndexStream
    augment_rng: torch.Generator
    student_inputs: Callable[[np.ndarray], torch.Tensor]  # image indices -> the student's input pixels
    memory_format: torch.memory_format
    device: str
    result: RunResult = field(default_factory=lambda: RunResult(steps=0, seconds=0.0, stopped_by="steps"))

    @classmethod
    def set_up(cls, config: StudentConfig, cache: Any, settings: Any, device: str, dist: _Distributed,
               weights: dict[str, Any] | None) -> _Run:
        """The model (from ``weights`` when given), optimiser, schedule and data streams of a new run."""
        torch.manual_seed(settings.seed)
        model = StudentTowers(config)
        if weights is not None:
            model.load_state_dict(weights)
        model.to(device).train()
        memory_format = convnet_memory_format(model.visual)
        model.visual.to(memory_format=memory_format)
        if model.text is not None:
            compact_vocab.compact(model.text, compact_vocab.used_token_ids(cache, config.text.vocab_size))
        fused = device == "cpu" or device.startswith("cuda")
        optimizer = torch.optim.AdamW(param_groups(model, settings.weight_decay), lr=settings.lr,
                                      betas=(0.9, 0.999), fused=fused)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                      warmup_cosine(settings.warmup_steps, settings.steps))
        augment_rng = torch.Generator().manual_seed(settings.seed + 7)
        mean, std = cache.mean_std
        return cls(model=model, wrapped=dist.wrap(model, device), optimizer=optimizer, scheduler=scheduler,
                   images=IndexStream(cache.n_images, settings.seed * 2 + 1),
                   texts=IndexStream(cache.n_texts, settings.seed * 2 + 2), augment_rng=augment_rng,
                   student_inputs=corpus_inputs(cache, config.vision.image_size, mean, std, settings.augment,
                                                augment_rng),
                   memory_format=memory_format, device=device)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (its model weights were loaded by ``set_up``)."""
        self.optimizer.load_state_dict(state["optimizer"])
        _state_in_parameter_layout(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.images.load(state["images"])
        self.texts.load(state["texts"])
        self.augment_rng.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.result = state["result"]

    def step(self, cache: Any, settings: Any, dist: _Distributed, use_amp: bool) -> dict[str, torch.Tensor]:
        """One optimiser step on the next image and sentence batches; returns the loss terms."""
        idx_i = self.images.take(settings.batch_size)
        idx_t = self.texts.take(settings.text_batch_size)
        x = self.student_inputs(idx_i[dist.my_slice(len(idx_i))]).to(self.device)
        x = x.contiguous(memory_format=self.memory_format)
        t_img = torch.from_numpy(cache.image_emb.take(idx_i).astype(np.float32)).to(self.device)
        t_txt = torch.from_numpy(cache.text_emb.take(idx_t).astype(np.float32)).to(self.device)
        tokens = None
        if self.model.text is not None:
            mine = cache.text_tokens.take(idx_t[dist.my_slice(len(idx_t))])
            tokens = fit_context(mine, self.model.config.text.context_length).to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            s_img, s_txt = self.wrapped(x, tokens)
        s_img, s_txt = dist.gather(s_img.float()), (dist.gather(s_txt.float()) if s_txt is not None else None)
        losses = _losses(settings.losses, s_img, t_img, t_txt, s_txt)
        check_finite(losses, self.result.steps)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return losses

    def save(self, path: Path) -> None:
        """A resumable checkpoint, written atomically: a kill while saving leaves the previous one."""
        with atomic_path(path) as tmp:
            torch.save({"model": compact_vocab.full_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "images": self.images.state(),
                        "texts": self.texts.state(), "augment_rng": self.augment_rng.get_state(),
                        "torch_rng": torch.get_rng_state(), "config": self.model.config.to_dict(),
                        "result": self.result}, tmp)

    def finished_model(self) -> StudentTowers:
        """The model as export and callers expect it: default memory layout, full vocabulary."""
        self.model.visual.to(memory_format=torch.contiguous_format)
        if self.model.text is not None:
            compact_vocab.expand(self.model.text)
        return self.model


def convnet_memory_format(tower: nn.Module) -> torch.memory_format:
    """channels_last for an image tower built of convolutions, else the default layout.

    oneDNN's CPU convolutions (and cuDNN's under autocast) run faster on NHWC tensors:
    timm's test_resnet trains 1.3x faster on this project's 2-core CPU. A ViT has a single
    convolution (its patch embedding) and gains nothing, so it keeps the default.
    """
    convs = sum(isinstance(m, nn.Conv2d) for m in tower.modules())
    return torch.channels_last if convs > 1 else torch.contiguous_format


def _state_in_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Optimizer state tensors in their parameter's memory layout: a checkpoint written before
    convnets trained channels-last holds contiguous moments, and fused AdamW assumes they match."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][name] = torch.empty_like(p).copy_(value)


def average_last_evals(evals: list[dict[str, Any]], final: dict[str, Any], k: int) -> dict[str, Any]:
    """``final`` with each numeric metric averaged over it and the last ``k - 1`` intermediate evaluations.

    Averaging a few evaluation points at the end of a short run damps the seed noise of
    a single reading; ``k = 1`` returns ``final`` unchanged.
    """
    if k < 1:
        raise ValueError(f"average_last_evals must be >= 1, got {k}")
    points = [e for e in evals[-(k - 1):] if e] if k > 1 else []
    return mean_of_readings(points, final) if points else final


def mean_of_readings(earlier: list[dict[str, Any]], last: dict[str, Any]) -> dict[str, Any]:
    """``last`` with each numeric metric averaged over it and the ``earlier`` readings that hold it
    (evaluations of one run over time, or the runs of one trial's seeds)."""
    out = dict(last)
    for key, value in last.items():
        values = [p[key] for p in earlier if isinstance(p.get(key), (int, float))]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and values:
            out[key] = float(sum(values) + value) / (len(values) + 1)
    return out


def _losses(cfg: Any, s_img, t_img, t_txt, s_txt) -> dict[str, torch.Tensor]:
    if cfg.kind == "feature":
        out = feature_distill_loss(s_img, t_img, kind="cosine")
        if s_txt is not None:
            text = feature_distill_loss(s_txt, t_txt, kind="cosine")
            out = {"image_cosine": out["cosine"], "text_cosine": text["cosine"],
                   "total": out["total"] + text["total"]}
        return out
    if cfg.kind != "dime-fm":
        raise ValueError(f"unknown loss kind {cfg.kind!r} (expected dime-fm or feature)")
    return dime_fm_losses(s_img, t_img, t_txt, s_txt, w_vl=cfg.w_vl, w_pvl=cfg.w_pvl, w_udist=cfg.w_udist,
                          t_vl=cfg.t_vl, t_pvl=cfg.t_pvl, t_udist=cfg.t_udist, w_text_vl=cfg.w_text_vl,
                          w_text_pvl=cfg.w_text_pvl)


def _open_log(folder: Path, resumed_at: int):
    """``log.jsonl``: every logged step's loss terms; a resumed run drops lines past its checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "log.jsonl"
    kept = [line for line in (path.read_text().splitlines() if path.exists() else [])
            if line and json.loads(line)["step"] < resumed_at]
    path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")


def progress_bar(enabled: bool, total: int, initial: int, desc: str = "distill"):
    """A tqdm bar of training steps (disabled: prints nothing)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, leave=False,
                dynamic_ncols=True)


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0 (the rank that evaluates and writes)."""
    return int(os.environ.get("RANK", "0")) == 0


class _Distributed:
    """Single process, or one rank of a torchrun job (DDP + all-gathered embeddings)."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @classmethod
    def from_env(cls) -> _Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        import torch.distributed as td

        if not td.is_initialized():
            td.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(td.get_rank(), world)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, device: str = "cpu") -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(device).index] if device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=model.text is None)

    def my_slice(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of n (concatenated back in rank order)."""
        if self.world == 1:
            return slice(0, n)
        if n % self.world:
            raise ValueError(f"batch size {n} is not divisible by the {self.world} processes")
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' rows, in rank order, with gradients flowing back to each rank's own rows."""
        if self.world == 1:
            return x
        import warnings

        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # deprecated, but its successor needs reduce_scatter, which gloo lacks
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(all_gather(x), dim=0)
