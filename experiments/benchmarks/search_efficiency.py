"""Search efficiency: how fast do the samplers find a front the whole grid defines?

    python experiments/benchmarks/search_efficiency.py [--proxy-steps 150 --seeds 5]

A small discrete ViT space is evaluated exhaustively once (objectives: short-proxy
accuracy, maximised; image-tower parameters, minimised); then TPE, NSGA-II, GP and
random search replay it (a lookup table, so each sampler sees the same values) for
as many trials as the grid has points, 5 seeds each. Hypervolume after each trial is
stated against one reference point fixed from the whole grid. Writes
experiments/results/search_efficiency.{json,md,png}.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np

import common

SPACE = {"name": "bench-small", "embed_dim": 256,
         "image": {"kind": ["vit"], "vit": {"layers": [1, 2, 3, 4], "width": [64, 128, 192], "heads": [2, 4],
                                            "mlp_ratio": [2.0], "patch_size": [8, 16], "image_size": [32]}},
         "text": {"kind": ["teacher"]}}
DIRECTIONS = ["maximize", "minimize"]


def sampler(name: str, seed: int, n_trials: int):
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":  # as dime_nas.search.study.make_sampler builds it
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=5)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(20, max(4, n_trials // 3)))
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)


def replay(space, table: dict, name: str, seed: int, n_trials: int, reference) -> dict:
    import optuna

    from dime_nas.search.stats import hypervolume_curve

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler(name, seed, n_trials))
    keys = []

    def objective(trial):
        key = space.suggest(trial, embed_dim=SPACE["embed_dim"]).arch_key
        keys.append(key)
        return table[key]

    study.optimize(objective, n_trials=n_trials)
    hv = hypervolume_curve(np.array([table[k] for k in keys]), DIRECTIONS, reference)
    return {"sampler": name, "seed": seed, "hv": hv, "distinct": len(set(keys)), "keys": keys}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxy-steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--samplers", default="tpe,nsga2,gp,random")
    a = p.parse_args()
    from dime_nas.distill.trainer import StudentTowers
    from dime_nas.search.pareto import default_reference, hypervolume
    from dime_nas.space import SearchSpace

    config, cache, _, _ = common.load()
    SPACE["embed_dim"] = cache.embed_dim
    space = SearchSpace(SPACE)
    proxy = common.settings(config.distill, steps=a.proxy_steps, warmup_steps=max(1, a.proxy_steps // 10),
                            batch_size=a.batch, text_batch_size=a.batch)
    grid, table = [], {}
    for s in space.grid(embed_dim=cache.embed_dim):
        acc = common.run(s, cache, proxy)["accuracy"]
        params = sum(q.numel() for q in StudentTowers(s).visual.parameters()) / 1e6
        table[s.arch_key] = (acc, params)
        grid.append({"arch_key": s.arch_key, "describe": s.describe(), "accuracy": acc, "params_m": params})
        print(s.describe(), acc, params, flush=True)
    points = np.array(list(table.values()))
    reference = default_reference(points, DIRECTIONS)
    exhaustive = hypervolume(points, DIRECTIONS, reference)
    n = len(grid)
    runs = [replay(space, table, name, seed, n, reference)
            for name in a.samplers.split(",") for seed in range(a.seeds)]
    at = max(1, int(round(0.25 * n)))
    summary = {}
    for name in a.samplers.split(","):
        curves = np.array([r["hv"] for r in runs if r["sampler"] == name]) / exhaustive
        summary[name] = {"mean_at_25pct": float(curves[:, at - 1].mean()), "min_at_25pct": float(curves[:, at - 1].min()),
                         "max_at_25pct": float(curves[:, at - 1].max()),
                         "runs_reaching_95pct": int(sum((c >= 0.95).any() for c in curves)),
                         "trials_to_95pct_mean": float(np.nanmean([int(np.argmax(c >= 0.95)) + 1 if (c >= 0.95).any()
                                                                   else np.nan for c in curves]))
                         if any((c >= 0.95).any() for c in curves) else None}
    data = {"sizes": vars(a), "grid": grid, "directions": DIRECTIONS, "reference": reference.tolist(),
            "exhaustive_hv": exhaustive, "runs": runs, "summary": summary,
            "note": "proxy measured on a shared, busy 2-core CPU"}
    md = [f"# Search efficiency\n\nGrid: {n} ViT students (layers 1-4, width 64/128/192, heads 2/4, patch 8/16, "
          f"32 px, teacher text), each scored once by a {a.proxy_steps}-step proxy (batch {a.batch}) for accuracy "
          f"(max) and image-tower params (min). Each sampler replays the table for {n} trials, {a.seeds} seeds; "
          f"hypervolume relative to the exhaustive front's (reference {np.round(reference, 4).tolist()}).\n",
          f"| sampler | HV ratio at {at} trials (25%): mean [min, max] | runs reaching 95% | trials to 95% (mean of those) |",
          "|---|---|---|---|"]
    md += [f"| {k} | {v['mean_at_25pct']:.3f} [{v['min_at_25pct']:.3f}, {v['max_at_25pct']:.3f}] | "
           f"{v['runs_reaching_95pct']}/{a.seeds} | {v['trials_to_95pct_mean'] or float('nan'):.1f} |" for k, v in summary.items()]
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in a.samplers.split(","):
        curves = np.array([r["hv"] for r in runs if r["sampler"] == name]) / exhaustive
        ax.plot(np.arange(1, n + 1), curves.mean(0), label=name)
    ax.axvline(at, ls=":", c="grey")
    ax.axhline(0.95, ls=":", c="grey")
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume / exhaustive")
    ax.legend()
    fig.tight_layout()
    fig.savefig(common.RESULTS / "search_efficiency.png", dpi=100)
    md.append("\n![](search_efficiency.png)\n")
    common.write("search_efficiency", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
