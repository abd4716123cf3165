"""Shared plumbing of the benchmark scripts: config, cache, students, one distillation, output files."""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "experiments" / "results"
BENCH_YAML = Path(__file__).with_name("bench.yaml")


def load(config_path: str | Path = BENCH_YAML):
    """(ExperimentConfig, FeatureCache, teacher text cfg, SearchSpace) of a benchmark experiment."""
    from dime_nas.config import load_experiment
    from dime_nas.pipeline import prepare_cache
    from dime_nas.space import SearchSpace, resolve_space_path

    config = load_experiment(config_path)
    cache, text_cfg = prepare_cache(config, progress=False)
    space = SearchSpace.load(resolve_space_path(config.space))
    return config, cache, text_cfg, space


def spread_students(space, embed_dim: int, n: int, seed: int = 0) -> list:
    """``n`` students picked evenly (in parameter count) from the space's grid, both text options mixed."""
    from dime_nas.distill.trainer import StudentTowers

    grid = space.grid(embed_dim=embed_dim)
    rng = np.random.default_rng(seed)
    pool = [grid[i] for i in rng.choice(len(grid), size=min(len(grid), max(8 * n, 64)), replace=False)]
    sizes = np.array([sum(p.numel() for p in StudentTowers(c).visual.parameters()) for c in pool])
    order = np.argsort(sizes)
    picks = [pool[order[int(round(q))]] for q in np.linspace(0, len(pool) - 1, n)]
    for i, c in enumerate(picks):  # alternate text towers so both options appear across sizes
        want = "teacher" if i % 2 == 0 else "transformer"
        if c.text.kind != want:
            alt = [g for g in grid if g.text.kind == want and asdict(g.vision) == asdict(c.vision)]
            if alt:
                picks[i] = alt[0]
    return picks


def settings(base, **overrides):
    """A copy of a DistillConfig with some fields replaced (``losses`` a dict of loss fields)."""
    s = copy.deepcopy(base)
    for k, v in overrides.items():
        if k == "losses":
            for lk, lv in v.items():
                setattr(s.losses, lk, lv)
        else:
            setattr(s, k, v)
    return s


def run(student, cache, distill_cfg) -> dict[str, Any]:
    """One distillation; its final metrics plus steps, seconds and loss curve head."""
    from functools import partial

    from dime_nas.distill.trainer import distill
    from dime_nas.evaluate import evaluate_towers

    t0 = time.time()
    _, result = distill(student, cache, distill_cfg, evaluate=partial(evaluate_towers, cache=cache))
    out = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    out.update(steps=result.steps, train_s=result.seconds, wall_s=time.time() - t0,
               first_losses=[c["total"] for c in result.curve[:3]], evals=result.evals)
    return out


def eval_counts(cache) -> dict[str, int]:
    """Images per evaluation task (for the binomial standard error of an accuracy)."""
    return {t.name: int(len(t.labels)) for t in cache.tasks()}


def binomial_se(acc: float, n: int) -> float:
    return math.sqrt(max(acc * (1 - acc), 0.0) / max(n, 1))


def write(name: str, data: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1, default=float) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot
