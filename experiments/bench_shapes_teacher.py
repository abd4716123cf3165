"""Demo-teacher training throughput: two recipes timed side by side, step for step.

Prints seconds per training step (median) and steps/s of the previous demo teacher
(64 px, 1,000 steps) and the current default (``ShapesTeacherConfig()``), with the
estimated training time of each recipe. The steps alternate between the two models in
one loop, so a busy or shared machine slows both alike and the ratio stays meaningful;
the load average is printed before and after. Steps use real pool batches, the
compact vocabulary and fused AdamW, as ``train_shapes_teacher`` does.

    python experiments/bench_shapes_teacher.py [--steps 12] [--threads N]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from dime_nas.config import ShapesTeacherConfig
from dime_nas import compact_vocab
from dime_nas.optim import param_groups
from dime_nas.shapes import teacher as shapes_teacher

# The recipe before the demo teacher was made cheaper: 64 px input, 1,000 steps at lr 1e-3.
PREVIOUS = dict(image_size=64, steps=1000, lr=1e-3)


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _trainer(cfg: ShapesTeacherConfig):
    """A closure running one training step of ``cfg`` on pool batches."""
    images, texts = shapes_teacher.training_pool(replace(cfg, pool_size=8 * cfg.batch_size))
    tokens = shapes_teacher._tokenizer(cfg)([t[0] for t in texts])
    torch.manual_seed(cfg.seed)
    model = shapes_teacher.build_model(cfg).train()
    compact_vocab.compact(model, torch.unique(tokens))
    optimizer = torch.optim.AdamW(param_groups(model, shapes_teacher.WEIGHT_DECAY), lr=cfg.lr, fused=True)
    labels = torch.arange(cfg.batch_size)
    step = [0]

    def run() -> float:
        start = (step[0] % 8) * cfg.batch_size
        step[0] += 1
        t0 = time.perf_counter()
        x = shapes_teacher._to_input(images[start:start + cfg.batch_size])
        img, txt, scale = model(x, tokens[start:start + cfg.batch_size])
        logits = scale * img @ txt.T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per recipe (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    current = ShapesTeacherConfig()
    recipes = {"previous": replace(current, **PREVIOUS), "current": current}
    print(f"torch threads {torch.get_num_threads()}, load average before {_loadavg()}")
    runs = {name: _trainer(cfg) for name, cfg in recipes.items()}
    times: dict[str, list[float]] = {name: [] for name in recipes}
    for name, run in runs.items():
        run()  # warm-up
    for _ in range(args.steps):
        for name, run in runs.items():
            times[name].append(run())
    print(f"load average after {_loadavg()}")
    per_step = {name: float(np.median(t)) for name, t in times.items()}
    for name, cfg in recipes.items():
        s = per_step[name]
        print(f"{name:9s} {cfg.image_size:3d} px, {cfg.steps:4d} steps, lr {cfg.lr:g}: {s:.3f} s/step "
              f"({1 / s:.2f} steps/s), training ~{cfg.steps * s:.0f} s")
    ratio = per_step["previous"] / per_step["current"]
    total = (recipes["previous"].steps * per_step["previous"]) / (current.steps * per_step["current"])
    print(f"steps/s ratio current/previous {ratio:.2f}x; training time ratio previous/current {total:.2f}x")
    at = 1.1  # the slow end of 2-core machines, in previous-recipe steps/s
    print(f"at {at} previous-recipe steps/s: previous training {recipes['previous'].steps / at:.0f} s, "
          f"current ~{current.steps / (at * ratio):.0f} s")


if __name__ == "__main__":
    main()
