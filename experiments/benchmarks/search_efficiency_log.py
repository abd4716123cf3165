"""Search efficiency re-read with log-scale cost: recompute hypervolume curves from
search_efficiency.json with log10(image-tower MMACs) as the cost objective.

    python experiments/benchmarks/search_efficiency_log.py

In linear MACs the reference point (the grid's most expensive student + 10%) makes the
cheap, accurate convnets hold almost all of the hypervolume, so a few lucky picks reach
95%; on a log scale every decade of cost weighs the same. Reads the replays' trial order
(``keys``) — no training, no sampling. Writes experiments/results/search_efficiency_log.{json,md}.
"""
from __future__ import annotations

import json

import numpy as np

import bench_stats
import common


def main() -> None:
    from dime_nas.search.pareto import default_reference, hypervolume
    from dime_nas.search.stats import hypervolume_curve

    d = json.loads((common.RESULTS / "search_efficiency.json").read_text())
    table = {g["arch_key"]: (g["accuracy"], float(np.log10(g["image_mmacs"]))) for g in d["grid"]}
    points = np.array(list(table.values()))
    dirs = d["directions"]
    reference = default_reference(points, dirs)
    exhaustive = hypervolume(points, dirs, reference)
    n = len(table)
    marks = {"10%": max(1, round(0.10 * n)), "25%": max(1, round(0.25 * n))}
    runs, summary = [], {}
    for r in d["runs"]:
        hv = hypervolume_curve(np.array([table[k] for k in r["keys"]]), dirs, reference)
        hv += [hv[-1]] * (n - len(hv))
        runs.append({"sampler": r["sampler"], "encoding": r["encoding"], "seed": r["seed"], "hv": hv})
    for key in dict.fromkeys((r["sampler"], r["encoding"]) for r in runs):
        curves = [r["hv"] for r in runs if (r["sampler"], r["encoding"]) == key]
        summary[f"{key[0]} ({key[1]})"] = {
            **{m: bench_stats.ratio_at(curves, exhaustive, k) for m, k in marks.items()},
            "trials_to_95pct": [bench_stats.trials_to_reach(c, exhaustive, 0.95) for c in curves]}
    data = {"reference": reference.tolist(), "exhaustive_hv": exhaustive, "directions": dirs,
            "objectives": ["accuracy", "log10 image-tower MMACs"], "marks": marks, "runs": runs, "summary": summary}
    md = [f"# Search efficiency, log-scale cost\n\nThe replays of `search_efficiency.json` re-read with log10(image-tower "
          f"MMACs) as the cost (reference {np.round(reference, 3).tolist()}). {n} students; 10% = {marks['10%']} trials, "
          f"25% = {marks['25%']} trials.\n",
          "| sampler (space encoding) | HV ratio at 10% (mean ± std [min]) | at 25% (mean ± std [min]) | trials to 95% (per seed) |",
          "|---|---|---|---|"]
    for k, v in summary.items():
        a, b = v["10%"], v["25%"]
        md.append(f"| {k} | {a['mean']:.3f} ± {a['std']:.3f} [{a['min']:.3f}] | {b['mean']:.3f} ± {b['std']:.3f} "
                  f"[{b['min']:.3f}] | {', '.join(str(x) if x else '-' for x in v['trials_to_95pct'])} |")
    common.write("search_efficiency_log", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
