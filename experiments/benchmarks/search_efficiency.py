"""Search efficiency: how fast do the samplers find the front the whole grid defines?

    python experiments/benchmarks/search_efficiency.py [--seeds 5 --workers 2]

A discrete space of 137 cost-cheap students (ViT: layers 1-4, width 32-128, MLP ratio
2/4, patch 8/16, 32/48 px; three test-size timm convnets at 32/48/64 px; teacher text)
is evaluated exhaustively once with the demo search's own proxy (experiments/demo.yaml:
120 steps, mean of the evaluations at steps 60 and 120, seed 0). Objectives: that
accuracy (maximised) and image-tower MACs (minimised). Then each sampler setting replays
the table for ``--seeds`` seeds, through ``SearchSpace.suggest`` exactly as a search
samples, and counting trials the way a search does: a proposal of an architecture the
study already evaluated reuses its result and does not count (capped at 3x the grid's
size in all). Hypervolume after each counted trial, against one reference point fixed
from the whole grid. The space is written twice: ordinal dimensions as integer ranges
(``ordinal``, the default) and everything as categorical lists (``categorical``).
Writes experiments/results/search_efficiency.{json,md,png}.
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings

import numpy as np

import common

SPACE = {"name": "bench-grid", "embed_dim": 256,
         "image": {"kind": ["vit", "timm"],
                   "vit": {"layers": {"low": 1, "high": 4}, "width": {"low": 32, "high": 128, "step": 32},
                           "heads": [2], "mlp_ratio": {"low": 2.0, "high": 4.0, "step": 2.0},
                           "patch_size": {"low": 8, "high": 16, "step": 8}, "image_size": {"low": 32, "high": 48, "step": 16}},
                   "timm": {"model": ["test_efficientnet", "test_byobnet", "test_convnext2"], "image_size": [32, 48, 64]}},
         "text": {"kind": ["teacher"]}}
DIRECTIONS = ["maximize", "minimize"]
SAMPLERS = "random,tpe,tpe-startup10,tpe-independent,nsga2,nsga2-pop10,gp"


def categorical(space: dict) -> dict:
    """The same space with every range written as a categorical list."""
    out = copy.deepcopy(space)
    for key, dim in out["image"]["vit"].items():
        if isinstance(dim, dict):
            lo, hi, step = dim["low"], dim["high"], dim.get("step", 1)
            n = int(round((hi - lo) / step)) + 1
            out["image"]["vit"][key] = [type(lo)(lo + i * step) for i in range(n)]
    return out


def sampler(name: str, seed: int, n_trials: int):
    """A sampler setting by name; ``tpe``, ``nsga2``, ``gp`` and ``random`` as make_sampler builds them."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":  # dime_nas.search.study.make_sampler
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=5)
        if name == "tpe-startup10":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10)
        if name == "tpe-independent":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
        if name == "nsga2":  # make_sampler's population for a study of n_trials
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(20, max(4, n_trials // 3)))
        if name == "nsga2-pop10":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler setting {name!r}")


def replay(space, embed_dim: int, table: dict, name: str, seed: int, reference, max_raw: int | None = None) -> dict:
    """One sampler run over the lookup table, counting distinct architectures as trials
    (at most ``max_raw`` trials in all, repeats included; default 3x the table)."""
    import optuna

    from dime_nas.search.stats import hypervolume_curve

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = len(table)
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler(name, seed, n))
    keys, seen, raw = [], set(), 0
    t0 = time.time()
    while len(seen) < n and raw < (max_raw or 3 * n):
        trial = study.ask()
        key = space.suggest(trial, embed_dim=embed_dim).arch_key
        raw += 1
        if key not in seen:
            seen.add(key)
            keys.append(key)
        study.tell(trial, list(table[key]))
    hv = hypervolume_curve(np.array([table[k] for k in keys]), DIRECTIONS, reference)
    return {"sampler": name, "seed": seed, "hv": hv, "keys": keys, "raw_trials": raw,
            "capped": len(keys) < n, "seconds": time.time() - t0}


def _replay_job(args):
    return replay(*args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(common.DEMO_YAML))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--samplers", default=SAMPLERS)
    p.add_argument("--encodings", default="ordinal,categorical")
    p.add_argument("--categorical-samplers", default="random,tpe,tpe-startup10,nsga2",
                   help="sampler settings also replayed on the categorical encoding (GP is slow: ordinal only)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gp-max-raw", type=int, default=None,
                   help="stop GP replays after this many trials, repeats included (GP slows as the study grows)")
    p.add_argument("--proxy-steps", type=int, default=None, help="override the proxy's steps (smoke runs)")
    p.add_argument("--limit", type=int, default=None, help="only the first N grid points (smoke runs)")
    p.add_argument("--store", default=None, help="resumable store of finished runs (default: the experiment's, "
                   "runs/benchmarks/runs-<hash>.jsonl)")
    p.add_argument("--name", default="search_efficiency")
    a = p.parse_args()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    import bench_stats
    from dime_nas.search.pareto import default_reference, hypervolume, non_dominated
    from dime_nas.space import SearchSpace
    from proxy_fidelity import image_cost

    torch.set_num_threads(a.threads)
    config, cache, _, _ = common.load(a.config)
    a.store = a.store or str(common.default_store(config))
    spec = {**SPACE, "embed_dim": cache.embed_dim}
    spaces = {"ordinal": SearchSpace(spec), "categorical": SearchSpace(categorical(spec))}
    proxy = config.distill if a.proxy_steps is None else common.settings(  # warm-up 10%, as the store's keys assume
        config.distill, steps=a.proxy_steps, warmup_steps=max(1, a.proxy_steps // 10))
    students = spaces["ordinal"].grid(embed_dim=cache.embed_dim)
    if a.limit:  # smoke runs: train only the first N; the rest are given chance accuracy (not a result)
        results = common.run_jobs([common.job(f"{s.arch_key}|short{proxy.steps}|seed0", s, common.settings(proxy, seed=0))
                                   for s in students[: a.limit]], a.config, a.store, a.workers, a.threads)
        for s in students[a.limit:]:
            results[f"{s.arch_key}|short{proxy.steps}|seed0"] = {"accuracy": 0.25, "train_s": 0.0, "wall_s": 0.0}
    assert {s.arch_key for s in students} <= {s.arch_key for s in spaces["categorical"].grid(embed_dim=cache.embed_dim)}
    jobs = [common.job(f"{s.arch_key}|short{proxy.steps}|seed0", s, common.settings(proxy, seed=0)) for s in students]
    if not a.limit:
        results = common.run_jobs(jobs, a.config, a.store, a.workers, a.threads)
    grid, table = [], {}
    for s in students:
        r = results[f"{s.arch_key}|short{proxy.steps}|seed0"]
        macs, params = image_cost(s)
        table[s.arch_key] = (r["accuracy"], macs)
        grid.append({"arch_key": s.arch_key, "describe": s.describe(), "accuracy": r["accuracy"], "image_mmacs": macs,
                     "image_params_m": params, "train_s": r["train_s"], "wall_s": r["wall_s"]})
    points = np.array([table[s.arch_key] for s in students])
    reference = default_reference(points, DIRECTIONS)
    exhaustive = hypervolume(points, DIRECTIONS, reference)
    n = len(grid)
    at = max(1, int(round(0.25 * n)))
    names = a.samplers.split(",")
    encodings = a.encodings.split(",")
    cat_names = set(a.categorical_samplers.split(","))
    work = [(spaces[e], cache.embed_dim, table, nm, seed, reference, e) for e in encodings for nm in names
            for seed in range(a.seeds) if e == "ordinal" or nm in cat_names]
    work.sort(key=lambda w: w[3] != "gp")  # the slow GP replays first, for an even finish
    t0 = time.time()
    with ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(a.threads,)) as pool:
        outs = list(pool.map(_replay_job, [(*w[:6], a.gp_max_raw if w[3] == "gp" else None) for w in work]))
    runs = [{**o, "encoding": w[6]} for o, w in zip(outs, work)]
    print(f"replays: {time.time() - t0:.0f} s", flush=True)
    summary = {}
    for e in encodings:
        for nm in names:
            rs = [r for r in runs if r["sampler"] == nm and r["encoding"] == e]
            if not rs:
                continue
            curves = [r["hv"] + [r["hv"][-1]] * (n - len(r["hv"])) for r in rs]
            reach = [bench_stats.trials_to_reach(c, exhaustive, 0.95) for c in curves]
            summary[f"{nm} ({e})"] = {
                "sampler": nm, "encoding": e, "at_25pct": bench_stats.ratio_at(curves, exhaustive, at),
                "at_50pct": bench_stats.ratio_at(curves, exhaustive, max(1, int(round(0.5 * n)))),
                "runs_reaching_95pct_by_25pct": int(sum(x is not None and x <= at for x in reach)),
                "trials_to_95pct": reach, "mean_auc_first_25pct": float(np.mean([np.mean(c[:at]) for c in curves]) / exhaustive),
                "replay_seconds": float(np.mean([r["seconds"] for r in rs])), "capped_runs": int(sum(r["capped"] for r in rs))}
    best = max(summary, key=lambda k: summary[k]["at_25pct"]["mean"])
    front = set(non_dominated(points, DIRECTIONS).tolist())  # the exhaustive front
    data = {"sizes": {**vars(a), "config": common.relative(a.config), "store": common.relative(a.store),
                      "grid": n, "proxy_steps": proxy.steps, "proxy_eval_every": proxy.eval_every,
                      "proxy_average_last_evals": proxy.average_last_evals, "at_25pct": at},
            "machine": common.machine(), "space": spec, "grid": grid, "directions": DIRECTIONS,
            "objectives": ["accuracy (short proxy, search-validation split)", "image-tower MACs in millions, batch 1"],
            "reference": reference.tolist(), "exhaustive_hv": exhaustive, "runs": runs, "summary": summary, "best": best,
            "note": "hv: hypervolume after each counted trial (a distinct architecture; repeats reuse a result and do "
                    "not count, as in a dime_nas search), same reference as exhaustive_hv"}
    n_vit = sum(s.vision.kind == "vit" for s in students)
    md = [f"# Search efficiency\n\nGrid: {n} students ({n_vit} ViTs: layers 1-4, width 32/64/96/128, 2 heads, MLP ratio "
          f"2/4, patch 8/16, 32/48 px; {n - n_vit} test-size timm convnets: efficientnet/byobnet/convnext2 at 32/48/64 px; "
          f"teacher text), each scored once by the demo search's proxy ({proxy.steps} steps, batch {proxy.batch_size}, "
          f"mean of the evaluations every {proxy.eval_every} steps, seed 0) for accuracy (max) and image-tower MACs "
          f"(min). Exhaustive front: {len(front)} students. Each sampler setting replays the table, "
          f"{a.seeds} seeds, counting distinct architectures as trials (as a search does; repeats reuse the result); "
          f"hypervolume relative to the exhaustive front's (reference {np.round(reference, 4).tolist()}). "
          f"25% of the grid = {at} trials.\n",
          "| sampler (space encoding) | HV ratio at 25% (mean ± std [min, max]) | at 50% (mean) | runs at >= 95% by 25% "
          "| trials to 95% (per seed) |", "|---|---|---|---|---|"]
    for k, v in summary.items():
        s25, s50 = v["at_25pct"], v["at_50pct"]
        md.append(f"| {k} | {s25['mean']:.3f} ± {s25['std']:.3f} [{s25['min']:.3f}, {s25['max']:.3f}] | {s50['mean']:.3f} | "
                  f"{v['runs_reaching_95pct_by_25pct']}/{a.seeds} | {', '.join(str(x) if x else '-' for x in v['trials_to_95pct'])} |")
    md.append(f"\nBest at 25%: **{best}**. Random at 25%: " + ", ".join(
        f"{v['at_25pct']['mean']:.3f} ({v['encoding']})" for k, v in summary.items() if v["sampler"] == "random") + ".")
    plt = common.plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for k, v in summary.items():
        rs = [r for r in runs if r["sampler"] == v["sampler"] and r["encoding"] == v["encoding"]]
        curves = np.array([r["hv"] + [r["hv"][-1]] * (n - len(r["hv"])) for r in rs]) / exhaustive
        ax.plot(np.arange(1, n + 1), curves.mean(0), label=k, ls="-" if v["encoding"] == "ordinal" else "--")
    ax.axvline(at, ls=":", c="grey")
    ax.axhline(0.95, ls=":", c="grey")
    ax.set_xlabel("trials (distinct architectures)")
    ax.set_ylabel("hypervolume / exhaustive (mean of seeds)")
    ax.set_ylim(0.5, 1.01)
    ax.legend(fontsize=6)
    ax = axes[1]
    ax.scatter(points[:, 1], points[:, 0], s=10, c=["C3" if i in front else "C0" for i in range(len(points))])
    ax.set_xscale("log")
    ax.set_xlabel("image-tower MMACs")
    ax.set_ylabel("proxy accuracy")
    ax.set_title("the grid (red: exhaustive front)", fontsize=9)
    fig.tight_layout()
    fig.savefig(common.RESULTS / f"{a.name}.png", dpi=100)
    m = data["machine"]
    md.append(f"\nThe grid took {sum(g['wall_s'] for g in grid) / 60:.1f} min of run time ({a.workers} worker process(es) x "
              f"{a.threads} thread(s); machine: {m['cpu']}, {m['cores']} cores, shared).\n\n![]({a.name}.png)\n")
    common.write(a.name, data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
