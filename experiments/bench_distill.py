"""Benchmark: distillation objectives and the cached-teacher trainer.

1. At equal steps on ShapesWorld with the demo teacher, train the same student with
   (a) the DIME-FM losses (default weights 0.7 VL + 0.3 P-VL), (b) VL only, and
   (c) the cosine feature-distillation baseline; print zero-shot top-1 per task,
   in-distribution and shifted, and retrieval R@1.
2. Step throughput of the cached-teacher trainer versus an online-teacher loop (the
   teacher embeds every batch, as open_clip's own distillation does), same student,
   same batches, measured back to back in one run; printed as a ratio.

Usage: python experiments/bench_distill.py [--experiment experiments/demo.yaml] [--steps 400]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from functools import partial

import numpy as np
import torch

from dime_nas.config import LossConfig, load_experiment
from dime_nas.distill.losses import dime_fm_losses
from dime_nas.distill.trainer import StudentTowers, distill
from dime_nas.evaluate import evaluate_towers
from dime_nas.optim import param_groups
from dime_nas.pipeline import prepare_cache, teacher_spec
from dime_nas.preprocess import to_model_input
from dime_nas.student import StudentConfig, TextTowerConfig, VisionTowerConfig
from dime_nas.teacher import load_teacher


def student(embed_dim: int) -> StudentConfig:
    return StudentConfig(embed_dim, VisionTowerConfig(kind="vit", image_size=64, layers=4, width=128, heads=4,
                                                      mlp_ratio=4.0, patch_size=8), TextTowerConfig(kind="teacher"))


def compare_objectives(cache, settings, config: StudentConfig) -> None:
    variants = {
        "DIME-FM (0.7 VL + 0.3 P-VL)": LossConfig(),
        "VL only": LossConfig(w_vl=1.0, w_pvl=0.0),
        "feature (cosine)": LossConfig(kind="feature"),
    }
    rows = {}
    for name, losses in variants.items():
        t0 = time.time()
        _, result = distill(config, cache, dataclasses.replace(settings, losses=losses), progress=True,
                            evaluate=partial(evaluate_towers, cache=cache))
        rows[name] = result.metrics
        print(f"  trained {name}: {result.steps} steps in {time.time() - t0:.0f} s", flush=True)
    tasks = sorted(k.split("/")[1] for k in next(iter(rows.values())) if k.startswith("task/") and k.endswith("/top1"))
    print(f"\nzero-shot top-1 after {settings.steps} steps (student {config.describe()})")
    print(f"{'task':22s}" + "".join(f"{n:>30s}" for n in rows) + f"{'teacher':>10s}")
    for task in tasks:
        teacher = next(iter(rows.values()))[f"teacher/{task}/top1"]
        print(f"{task:22s}" + "".join(f"{m[f'task/{task}/top1']:30.3f}" for m in rows.values()) + f"{teacher:10.3f}")
    for key in ("accuracy", "shifted_accuracy", "retrieval", "agreement"):
        print(f"{key:22s}" + "".join(f"{m.get(key, float('nan')):30.3f}" for m in rows.values()))


def online_teacher_steps(config: StudentConfig, cache, teacher, settings, steps: int) -> float:
    """Seconds per step of a loop that runs the teacher on every batch (no feature cache)."""
    model = StudentTowers(config).train()
    optimizer = torch.optim.AdamW(param_groups(model, settings.weight_decay), lr=settings.lr, fused=True)
    mean, std = cache.mean_std
    rng = np.random.default_rng(0)
    tokens_all = cache.text_tokens
    t0 = None
    for step in range(steps + 2):
        if step == 2:  # two warm-up steps, like the cached run's first steps
            t0 = time.time()
        idx_i = rng.choice(cache.n_images, settings.batch_size, replace=False)
        idx_t = rng.choice(cache.n_texts, settings.text_batch_size, replace=False)
        pixels = cache.pixels.take(idx_i)
        t_img = teacher.encode_images(to_model_input(pixels, teacher.image_size, mean, std))
        t_txt = teacher.encode_tokens(torch.from_numpy(tokens_all.take(idx_t).astype(np.int64)))
        s_img = model.visual(to_model_input(pixels, config.vision.image_size, mean, std))
        loss = dime_fm_losses(s_img, t_img, t_txt)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.time() - t0) / steps


def compare_throughput(cache, teacher, settings, config: StudentConfig, steps: int) -> None:
    short = dataclasses.replace(settings, steps=steps + 2, warmup_steps=1)
    rounds = []
    for _ in range(2):  # interleaved, so machine noise hits both sides alike
        _, r = distill(config, cache, short)
        cached = r.seconds / r.steps
        online = online_teacher_steps(config, cache, teacher, settings, steps)
        rounds.append((cached, online))
    cached = float(np.median([c for c, _ in rounds]))
    online = float(np.median([o for _, o in rounds]))
    print(f"\nstep time, batch {settings.batch_size} images + {settings.text_batch_size} sentences, "
          f"{steps} steps x {len(rounds)} interleaved rounds:")
    print(f"  cached teacher features: {cached * 1000:8.1f} ms/step")
    print(f"  online teacher forward : {online * 1000:8.1f} ms/step")
    print(f"  cached-teacher trainer is {online / cached:.2f}x faster per step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="experiments/demo.yaml")
    p.add_argument("--steps", type=int, default=400, help="training steps per objective")
    p.add_argument("--throughput-steps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    config = load_experiment(args.experiment)
    teacher = load_teacher(teacher_spec(config.teacher))
    cache, _ = prepare_cache(config, teacher=teacher)
    print(f"cache: {cache.n_images} images, {cache.n_texts} sentences, teacher {teacher.identity}")
    settings = dataclasses.replace(config.distill, steps=args.steps, warmup_steps=max(1, args.steps // 10))
    s = student(cache.embed_dim)
    compare_throughput(cache, teacher, settings, s, args.throughput_steps)
    compare_objectives(cache, settings, s)


if __name__ == "__main__":
    main()
