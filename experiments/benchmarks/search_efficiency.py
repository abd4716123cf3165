"""Search efficiency: how fast do the samplers find the front the whole grid defines?

    python experiments/benchmarks/search_efficiency.py --space experiments/benchmarks/search-grid.yaml \
        --config experiments/demo.yaml --cost log10-macs --seeds 10 --samplers random,tpe,nsga2,gp \
        --encodings ordinal --max-fraction 0.25 --gp-max-raw 400 \
        --store experiments/results/search_efficiency_500_runs.jsonl --name search_efficiency_500

A discrete space (``--space``; default the 137-student grid of the first measurement, kept as
history) is evaluated exhaustively once with the experiment's own proxy (its short run, seed
0; raw scores in the JSON). Objectives: that accuracy (maximised) and the image tower's cost
(minimised): MACs, or log10 MACs (``--cost``), where each decade of cost weighs the same; MACs
are counted, not timed, so the cost axis does not move with the machine's load. Then each
sampler setting replays the table for ``--seeds`` seeds, through ``SearchSpace.suggest`` exactly
as a search samples, telling the sampler the same objectives the hypervolume is judged on, and
counting trials the way a search does: a proposal of an architecture the study already
evaluated reuses its result and does not count (replays stop at ``--max-fraction`` of the grid
in distinct trials, or 3x the grid's size in all). ``random``, ``tpe``, ``nsga2`` and ``gp``
are built by ``make_sampler`` exactly as a search builds them. Hypervolume after each counted
trial, against one reference point fixed from the whole grid; reported at 25 trials (random
must be far from the front there for the space to discriminate), at 10% and 25% of the grid,
the trials each seed needs to reach 95% of the exhaustive hypervolume, and a one-sided
permutation test of each sampler against random at equal trials.
Writes experiments/results/<name>.{json,md,png}.
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings
from types import SimpleNamespace

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


COSTS = {"macs": lambda mmacs: mmacs, "log10-macs": lambda mmacs: float(np.log10(mmacs))}
COST_LABELS = {"macs": "image-tower MACs in millions, batch 1", "log10-macs": "log10 of image-tower MACs in millions"}


def sampler(name: str, seed: int, n_trials: int):
    """A sampler setting by name: ``tpe``, ``nsga2``, ``gp`` and ``random`` built by ``make_sampler``
    as a search of ``n_trials`` builds them; the others are variants of them."""
    import optuna

    from dime_nas.config import SearchConfig
    from dime_nas.search.study import make_sampler

    if name in ("tpe", "nsga2", "gp", "random"):
        search = SearchConfig(sampler=name, seed=seed, trials=n_trials)
        return make_sampler(SimpleNamespace(search=search), n_objectives=len(DIRECTIONS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe-startup10":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10)
        if name == "tpe-independent":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
        if name == "nsga2-pop10":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
    raise ValueError(f"unknown sampler setting {name!r}")


def replay(space, embed_dim: int, table: dict, name: str, seed: int, reference, max_raw: int | None = None,
           max_distinct: int | None = None) -> dict:
    """One sampler run over the lookup table (arch_key -> objective values), counting distinct
    architectures as trials: at most ``max_distinct`` of them (default the whole table) and
    ``max_raw`` trials in all, repeats included (default 3x the table)."""
    import optuna

    from dime_nas.search.stats import hypervolume_curve

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = len(table)
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler(name, seed, n))
    keys, seen, raw = [], set(), 0
    t0 = time.time()
    while len(seen) < (max_distinct or n) and raw < (max_raw or 3 * n):
        trial = study.ask()
        key = space.suggest(trial, embed_dim=embed_dim).arch_key
        raw += 1
        if key not in seen:
            seen.add(key)
            keys.append(key)
        study.tell(trial, list(table[key]))
    hv = hypervolume_curve(np.array([table[k] for k in keys]), DIRECTIONS, reference)
    return {"sampler": name, "seed": seed, "hv": hv, "keys": keys, "raw_trials": raw,
            "capped": len(keys) < (max_distinct or n), "seconds": time.time() - t0}


def _replay_job(args):
    return replay(*args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(common.DEMO_YAML))
    p.add_argument("--space", default=None, help="space file to score exhaustively (default: the 137-student "
                   "grid of the first measurement, SPACE above)")
    p.add_argument("--cost", choices=sorted(COSTS), default="macs", help="the cost objective")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--samplers", default=SAMPLERS)
    p.add_argument("--encodings", default="ordinal,categorical")
    p.add_argument("--categorical-samplers", default="random,tpe,tpe-startup10,nsga2",
                   help="sampler settings also replayed on the categorical encoding (GP is slow: ordinal only)")
    p.add_argument("--max-fraction", type=float, default=1.0,
                   help="stop each replay after this share of the grid in distinct trials")
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
    from dime_nas.typed_yaml import load_yaml_mapping
    from proxy_fidelity import image_cost

    torch.set_num_threads(a.threads)
    config, cache, _, _ = common.load(a.config)
    a.store = a.store or str(common.default_store(config))
    spec = {**(load_yaml_mapping(a.space) if a.space else SPACE), "embed_dim": cache.embed_dim}
    spaces = {"ordinal": SearchSpace(spec, source=a.space or "<SPACE>"),
              "categorical": SearchSpace(categorical(spec), source=a.space or "<SPACE>")}
    proxy = config.distill if a.proxy_steps is None else common.settings(  # warm-up 10%, as the store's keys assume
        config.distill, steps=a.proxy_steps, warmup_steps=max(1, a.proxy_steps // 10))
    students = spaces["ordinal"].grid(embed_dim=cache.embed_dim)
    cfg, key = common.short_candidates(proxy, None)[f"lr {proxy.lr:g}"]
    costs = {s.arch_key: image_cost(s) for s in students}
    jobs = [common.short_job(s, cfg, key, 0) for s in sorted(students, key=lambda s: -costs[s.arch_key][0])]
    if a.limit:  # smoke runs: train only the first N; the rest are given chance accuracy (not a result)
        jobs = [j for j in jobs if j["key"] in {f"{key(s)}|seed0" for s in students[: a.limit]}]
    results = common.run_jobs(jobs, a.config, a.store, a.workers, a.threads)
    for s in students[a.limit or len(students):]:
        results[f"{key(s)}|seed0"] = {"accuracy": 0.25, "train_s": 0.0, "wall_s": 0.0}
    assert {s.arch_key for s in students} <= {s.arch_key for s in spaces["categorical"].grid(embed_dim=cache.embed_dim)}
    grid, table = [], {}
    for s in students:
        r = results[f"{key(s)}|seed0"]
        macs, params = costs[s.arch_key]
        table[s.arch_key] = (r["accuracy"], COSTS[a.cost](macs))
        grid.append({"arch_key": s.arch_key, "describe": s.describe(), "accuracy": r["accuracy"], "image_mmacs": macs,
                     "image_params_m": params, "train_s": r["train_s"], "wall_s": r["wall_s"]})
    points = np.array([table[s.arch_key] for s in students])
    reference = default_reference(points, DIRECTIONS)
    exhaustive = hypervolume(points, DIRECTIONS, reference)
    n = len(grid)
    length = max(1, int(round(a.max_fraction * n)))  # trials each curve covers
    marks = {"25 trials": min(25, length), **{f"{f:.0%} of the grid": max(1, int(round(f * n))) for f in (0.1, 0.25, 0.5)
                                              if int(round(f * n)) <= length}}
    names = a.samplers.split(",")
    encodings = a.encodings.split(",")
    cat_names = set(a.categorical_samplers.split(","))
    work = [(spaces[e], cache.embed_dim, table, nm, seed, reference, e) for e in encodings for nm in names
            for seed in range(a.seeds) if e == "ordinal" or nm in cat_names]
    work.sort(key=lambda w: w[3] != "gp")  # the slow GP replays first, for an even finish
    t0 = time.time()
    with ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(a.threads,)) as pool:
        outs = list(pool.map(_replay_job, [(*w[:6], a.gp_max_raw if w[3] == "gp" else None, length) for w in work]))
    runs = [{**o, "encoding": w[6]} for o, w in zip(outs, work)]
    print(f"replays: {time.time() - t0:.0f} s", flush=True)

    def curves_of(nm: str, e: str) -> list[list[float]]:
        """Each seed's curve over ``length`` trials (a replay that stalled keeps its last value)."""
        return [r["hv"] + [r["hv"][-1]] * (length - len(r["hv"])) for r in runs if r["sampler"] == nm
                and r["encoding"] == e]

    summary = {}
    for e in encodings:
        for nm in names:
            curves = curves_of(nm, e)
            if not curves:
                continue
            reach = [bench_stats.trials_to_reach(c, exhaustive, 0.95) for c in curves]
            ten = marks.get("10% of the grid")
            summary[f"{nm} ({e})"] = {
                "sampler": nm, "encoding": e, **{m: bench_stats.ratio_at(curves, exhaustive, k) for m, k in marks.items()},
                "trials_to_95pct": reach, "runs_reaching_95pct_by_10pct": None if ten is None else
                int(sum(x is not None and x <= ten for x in reach)),
                "replay_seconds": float(np.mean([r["seconds"] for r in runs if r["sampler"] == nm and r["encoding"] == e])),
                "capped_runs": int(sum(r["capped"] for r in runs if r["sampler"] == nm and r["encoding"] == e))}
            if nm != "random" and curves_of("random", e):
                summary[f"{nm} ({e})"]["p_above_random"] = {
                    m: bench_stats.permutation_p_greater(np.array(curves)[:, k - 1], np.array(curves_of("random", e))[:, k - 1])
                    for m, k in marks.items()}
    front = set(non_dominated(points, DIRECTIONS).tolist())  # the exhaustive front
    data = {"sizes": {**vars(a), "config": common.relative(a.config), "store": common.relative(a.store),
                      "space": common.relative(a.space) if a.space else "SPACE (search_efficiency.py)",
                      "grid": n, "proxy_steps": proxy.steps, "proxy_lr": proxy.lr, "proxy_eval_every": proxy.eval_every,
                      "proxy_average_last_evals": proxy.average_last_evals, "marks": marks, "curve_length": length},
            "machine": common.machine(), "space": spec, "grid": grid, "grid_size": n, "directions": DIRECTIONS,
            "objectives": ["accuracy (short proxy, search-validation split)", COST_LABELS[a.cost]],
            "reference": reference.tolist(), "exhaustive_hv": exhaustive, "runs": runs, "summary": summary,
            "note": "hv: hypervolume after each counted trial (a distinct architecture; repeats reuse a result and do "
                    "not count, as in a dime_nas search), same reference as exhaustive_hv"}
    n_vit = sum(s.vision.kind == "vit" for s in students)
    random_25 = {e: summary[f"random ({e})"]["25 trials"]["mean"] for e in encodings if f"random ({e})" in summary}
    md = [f"# Search efficiency\n\nGrid: {n} students of `{data['sizes']['space']}` ({n_vit} ViTs, {n - n_vit} timm "
          f"convnets), each scored once by the experiment's proxy (`{common.relative(a.config)}`: {proxy.steps} steps, "
          f"batch {proxy.batch_size}, peak lr {proxy.lr:g}, seed 0) for accuracy (max) and {COST_LABELS[a.cost]} (min). "
          f"Exhaustive front: {len(front)} students. Each sampler setting replays the table for {a.seeds} seeds, "
          f"counting distinct architectures as trials (as a search does; repeats reuse the result), up to {length} "
          f"trials; hypervolume relative to the exhaustive front's (reference {np.round(reference, 4).tolist()}). "
          f"p: one-sided permutation test of the sampler's hypervolume above random's over the seeds, at equal "
          f"trials.\n",
          "| sampler (space encoding) | " + " | ".join(f"HV ratio at {m} ({k}): mean ± std [min] | p" for m, k in
                                                      marks.items()) + " | trials to 95% (per seed) |",
          "|---" * (2 * len(marks) + 2) + "|"]
    for k, v in summary.items():
        cells = [f"{v[m]['mean']:.3f} ± {v[m]['std']:.3f} [{v[m]['min']:.3f}] | "
                 + (f"{v['p_above_random'][m]:.4f}" if "p_above_random" in v else "") for m in marks]
        md.append(f"| {k} | " + " | ".join(cells) + f" | {', '.join(str(x) if x else '-' for x in v['trials_to_95pct'])} |")
    md.append("\nRandom at 25 trials: " + ", ".join(f"{v:.3f} ({e})" for e, v in random_25.items())
              + " of the exhaustive hypervolume (the space discriminates if this is <= 0.9).")
    plt = common.plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for k, v in summary.items():
        c = np.array(curves_of(v["sampler"], v["encoding"])) / exhaustive
        line, = ax.plot(np.arange(1, length + 1), c.mean(0), label=k, ls="-" if v["encoding"] == "ordinal" else "--")
        ax.fill_between(np.arange(1, length + 1), c.min(0), c.max(0), color=line.get_color(), alpha=0.1)
    for m, k in marks.items():
        ax.axvline(k, ls=":", c="grey")
    ax.axhline(0.95, ls=":", c="grey")
    ax.set_xlabel("trials (distinct architectures)")
    ax.set_ylabel("hypervolume / exhaustive (mean of seeds; band: min-max)")
    ax.set_ylim(0.5, 1.01)
    ax.legend(fontsize=6)
    ax = axes[1]
    ax.scatter(points[:, 1], points[:, 0], s=8, c=["C3" if i in front else "C0" for i in range(len(points))])
    if a.cost == "macs":
        ax.set_xscale("log")
    ax.set_xlabel(COST_LABELS[a.cost])
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
