"""Shared plumbing of the benchmark scripts: config, cache, students, one distillation, output files."""
from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
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
DEMO_YAML = ROOT / "experiments" / "demo.yaml"  # the demo experiment: its teacher, cache, space and short run


def relative(path: str | Path) -> str:
    """``path`` as results record it: relative to the repository when inside it (no machine's paths)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return Path(path).name


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
    s.__post_init__()  # the same checks as a config file's (a scale of 0, say, is refused)
    return s


def long_settings(config, steps: int, seed: int, losses: dict[str, Any] | None = None):
    """The long run: the experiment's short-run recipe for ``steps`` steps (warm-up 10%),
    scored once at the end (no intermediate evaluations)."""
    return settings(config.distill, steps=steps, warmup_steps=max(1, steps // 10), eval_every=None,
                    average_last_evals=1, seed=seed, losses=losses or {})


# What a stored run's key names (steps, seed) or implies (the scripts give every run a warm-up
# of 10% of its steps), what only chooses those (text_tower_step_scale sets a student's steps),
# or what does not change a run's result; the rest of the recipe, the teacher, corpora and
# evaluation sets name the store.
_KEYED = ("steps", "warmup_steps", "seed", "seeds", "text_tower_step_scale", "checkpoint_every", "device", "compile")


def default_store(config) -> Path:
    """The resumable run store of an experiment: ``runs/benchmarks/runs-<hash>.jsonl``, the hash
    of everything that changes a run's result but is not in its key, so that experiments which
    differ (another evaluation set, say) never reuse each other's runs, and equal ones share."""
    from dime_nas.search.study import teacher_identity
    from dime_nas.typed_yaml import to_plain

    plain = to_plain(config)
    identity = {"teacher": teacher_identity(plain["teacher"]), "data": plain["data"], "eval": plain["eval"],
                "recipe": {k: v for k, v in plain["distill"].items() if k not in _KEYED}}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return ROOT / "runs" / "benchmarks" / f"runs-{digest}.jsonl"


def long_key(student, steps: int, seed: int, objective: str) -> str:
    """Store key of a long run (shared by proxy_fidelity.py and objectives.py)."""
    return f"{student.arch_key}|long{steps}|seed{seed}|{objective}"


def short_candidates(base, lrs: str | None, lr: float | None = None) -> dict[str, tuple[Any, Any]]:
    """Short-run settings to compare, by name ("lr 0.002"): ``lrs`` "0.002,0.004", else ``lr``, else
    ``base`` as it is. Each comes with its store key (student -> key prefix), which names a learning
    rate other than ``base``'s, so that proxy_fidelity.py, seed_noise.py and search_efficiency.py
    share the runs of the same setting."""
    values = [float(x) for x in lrs.split(",")] if lrs else [lr] if lr is not None else [None]
    out = {}
    for value in values:
        cfg = base if value is None else settings(base, lr=value)
        tag = "" if value is None or value == base.lr else f"|lr{value:g}"
        out[f"lr {cfg.lr:g}"] = (cfg, lambda s, cfg=cfg, tag=tag: f"{s.arch_key}|short{cfg.for_student(s).steps}{tag}")
    return out


def short_job(student, cfg, key, seed: int) -> dict[str, Any]:
    """A search trial's short run of ``student`` under candidate settings ``cfg`` at ``seed``."""
    return job(f"{key(student)}|seed{seed}", student, settings(cfg.for_student(student), seed=seed))


def run(student, cache, distill_cfg, splits: tuple[str, ...] = (), checkpoint_dir: str | None = None) -> dict[str, Any]:
    """One distillation; its final metrics (search-validation split, averaged over the last
    ``average_last_evals`` evaluations as the search scores it) plus steps, seconds and the
    loss curve head (logged every 10 steps). ``splits``: also evaluate the final model on
    these splits ("test", "all"), as ``<split>/<metric>``. ``checkpoint_dir``: checkpoint every
    ``checkpoint_every`` steps there and resume from it (long runs: a kill loses minutes, not the run)."""
    from functools import partial

    from dime_nas.distill.trainer import distill
    from dime_nas.evaluate import evaluate_student, evaluate_towers

    t0 = time.time()
    model, result = distill(student, cache, distill_cfg, evaluate=partial(evaluate_towers, cache=cache),
                            checkpoint_dir=checkpoint_dir, resume=checkpoint_dir is not None)
    out = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    out.update(steps=result.steps, train_s=result.seconds, wall_s=time.time() - t0,
               first_losses=[c["total"] for c in result.curve[:3]],
               evals=[{k: v for k, v in e.items() if not k.startswith(("task/", "teacher/"))} for e in result.evals])
    k = distill_cfg.average_last_evals if distill_cfg.eval_every else 1
    points = [e["accuracy"] for e in result.evals[-(k - 1):]] if k > 1 and result.evals else []
    out["final_accuracy"] = (len(points) + 1) * out["accuracy"] - sum(points)  # the last evaluation alone
    ctx = student.text.context_length if model.text is not None else None
    for split in splits:
        m = evaluate_student(model.visual, cache, student.vision.image_size, model.text, ctx, split=split)
        out.update({f"{split}/{k}": v for k, v in m.items() if isinstance(v, (int, float))})
    return out


# ---- several runs on a pool of single-threaded worker processes --------------------------
# Tiny students parallelise poorly inside one process: two processes of one thread each
# keep two cores busier than one process of two threads.

_WORKER: dict[str, Any] = {}


def _init_worker(config_path: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    config, cache, _, _ = load(config_path)
    _WORKER.update(config=config, cache=cache)


def _do_job(job: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    from dime_nas.student import StudentConfig

    student = StudentConfig.from_json(job["student"])
    return job["key"], run(student, _WORKER["cache"], job["settings"], tuple(job.get("splits", ())),
                           job.get("checkpoint_dir"))


def job(key: str, student, distill_cfg, splits: tuple[str, ...] = (), checkpoint: bool = False) -> dict[str, Any]:
    """One unit of work for ``run_jobs`` (``key`` names it in the resumable store); ``checkpoint``:
    the run checkpoints beside the store and resumes from there after a kill (long runs)."""
    return {"key": key, "student": student.to_json(), "settings": distill_cfg, "splits": list(splits),
            "checkpoint": checkpoint}


def checkpoint_dir(store: Path, key: str) -> Path:
    """Where a checkpointed job of ``store`` keeps its checkpoint until its result is stored."""
    return store.parent / f"{store.stem}-checkpoints" / hashlib.sha256(key.encode()).hexdigest()[:16]


def read_records(store: str | Path) -> list[dict[str, Any]]:
    """The records of a resumable JSON-lines store, in the order written (none if it does not exist)."""
    store = Path(store)
    if not store.is_file():
        return []
    return [json.loads(line) for line in store.read_text().splitlines() if line.strip()]


def run_jobs(jobs: list[dict[str, Any]], config_path: str | Path, store: str | Path, workers: int = 2,
             threads: int = 1) -> dict[str, dict[str, Any]]:
    """Run ``jobs`` on ``workers`` processes of ``threads`` threads each; key -> result.

    Each finished job is appended to ``store`` (JSON lines) at once, and jobs whose key is
    already there are not run again, so an interrupted benchmark resumes where it stopped.
    Jobs start in the given order (put the longest first for an even finish).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    store = Path(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    done = {rec["key"]: rec["result"] for rec in read_records(store)}
    todo = [{**j, "checkpoint_dir": str(checkpoint_dir(store, j["key"]))} if j.get("checkpoint") else j
            for j in jobs if j["key"] not in done]
    print(f"{len(jobs)} jobs, {len(jobs) - len(todo)} already in {store}, {len(todo)} to run on "
          f"{workers} x {threads} thread(s)", flush=True)
    t0 = time.time()
    if todo:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(str(config_path), threads)) as pool, store.open("a") as f:
            futures = [pool.submit(_do_job, j) for j in todo]
            for i, fut in enumerate(as_completed(futures), 1):
                key, result = fut.result()
                done[key] = result
                f.write(json.dumps({"key": key, "result": result}, default=float) + "\n")
                f.flush()
                shutil.rmtree(checkpoint_dir(store, key), ignore_errors=True)  # stored: its checkpoint is spent
                print(f"[{i}/{len(todo)} {time.time() - t0:.0f}s] {key} acc={result.get('accuracy', float('nan')):.3f} "
                      f"train {result['train_s']:.1f}s", flush=True)
    return {j["key"]: done[j["key"]] for j in jobs}


def supernet_step_s(config: Any, space: Any, cache: Any, warm: int = 3, timed: int = 12) -> dict[str, float]:
    """Seconds per supernet training step on this machine now, as CPU time (``cpu``: what the step
    costs, whatever else the machine runs; one torch thread) and wall time (``wall``): two fresh
    trainings of ``warm`` and ``warm + timed`` steps (the experiment's recipe) in a scratch folder,
    the difference over ``timed``."""
    import tempfile

    from dime_nas.supernet.train import train_supernet

    took = []
    for n in (warm, warm + timed):
        with tempfile.TemporaryDirectory() as scratch:
            t0, c0 = time.time(), time.process_time()
            train_supernet(space, cache, config.supernet, config.distill.losses, checkpoint_dir=scratch,
                           resume=False, stop_after=n)
            took.append((time.time() - t0, time.process_time() - c0))
    step = {"wall": (took[1][0] - took[0][0]) / timed, "cpu": (took[1][1] - took[0][1]) / timed}
    print(f"supernet: {step['cpu']:.2f} s CPU ({step['wall']:.2f} s wall) per step now", flush=True)
    return step


def machine() -> dict[str, Any]:
    """Where the numbers were measured: CPU, cores, load, library versions."""
    import os
    import platform

    import torch

    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "load_avg": list(os.getloadavg()),
            "torch": torch.__version__, "python": platform.python_version()}


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
