"""DIME-FM against baselines at the long budget, with the teacher's score as the ceiling.

    python experiments/benchmarks/objectives.py [--students 3 --seeds 3 --steps 1500 --batch 64]

Objectives: VL only; DIME-FM (0.7 VL + 0.3 P-VL); DIME-FM + UDist (0.3); feature
(cosine) distillation. Metrics: in-distribution accuracy, shifted accuracy, retrieval
R@1, teacher agreement. Writes experiments/results/objectives.{json,md,png}.
"""
from __future__ import annotations

import argparse

import numpy as np

import common

OBJECTIVES = {
    "VL only": {"w_vl": 1.0, "w_pvl": 0.0, "w_udist": 0.0, "w_text_vl": 1.0, "w_text_pvl": 0.0},
    "DIME-FM (0.7 VL + 0.3 P-VL)": {},
    "DIME-FM + UDist 0.3": {"w_udist": 0.3},
    "feature (cosine)": {"kind": "feature"},
}
METRICS = ["accuracy", "shifted_accuracy", "retrieval", "agreement"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", type=int, default=2)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    config, cache, _, space = common.load()
    base = common.settings(config.distill, steps=a.steps, warmup_steps=max(1, a.steps // 10), batch_size=a.batch,
                           text_batch_size=a.batch)
    students = common.spread_students(space, cache.embed_dim, a.students, seed=3)
    runs, teacher = [], {}
    for s in students:
        for name, losses in OBJECTIVES.items():
            for seed in range(a.seeds):
                r = common.run(s, cache, common.settings(base, seed=seed, losses=losses))
                runs.append({"arch_key": s.arch_key, "describe": s.describe(), "objective": name, "seed": seed,
                             **{m: r.get(m) for m in METRICS}})
                teacher = {k: v for k, v in r.items() if k.startswith("teacher/")}
                print(name, s.describe(), [round(r.get(m, float("nan")), 3) for m in METRICS], flush=True)
    ind = [k for k in teacher if not any(x in k for x in ("-sketch", "-noisy"))]
    shifted = [k for k in teacher if k not in ind]
    ceiling = {"accuracy": float(np.mean([teacher[k] for k in ind])),
               "shifted_accuracy": float(np.mean([teacher[k] for k in shifted])) if shifted else None,
               "retrieval": None, "agreement": 1.0}
    table = {name: {m: float(np.mean([r[m] for r in runs if r["objective"] == name])) for m in METRICS}
             for name in OBJECTIVES}
    spread = {name: {m: float(np.std([r[m] for r in runs if r["objective"] == name], ddof=1)) for m in METRICS}
              for name in OBJECTIVES}
    data = {"sizes": vars(a), "runs": runs, "table": table, "std": spread, "teacher": ceiling,
            "note": "measured on a shared, busy 2-core CPU"}
    md = [f"# DIME-FM against baselines\n\n{a.students} students x {a.seeds} seeds x {len(OBJECTIVES)} objectives, "
          f"{a.steps} steps at batch {a.batch}. The issue asks for 3 students x 3 seeds at the long budget "
          "(1500 steps); this run is far smaller (2-core shared machine), so read it as a short-budget comparison.\n",
          "| objective | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    md += [f"| {n} | " + " | ".join(f"{t[m]:.3f}" for m in METRICS) + " |" for n, t in table.items()]
    md.append("| teacher (ceiling) | " + " | ".join("-" if ceiling[m] is None else f"{ceiling[m]:.3f}"
                                                 for m in METRICS) + " |")
    md.append("\nValues: means over students and seeds (std across students and seeds in the JSON).\n")
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.8 / len(OBJECTIVES)
    for i, (n, t) in enumerate(table.items()):
        ax.bar(np.arange(len(METRICS)) + i * w, [t[m] for m in METRICS], w, label=n)
    ax.set_xticks(np.arange(len(METRICS)) + 0.4 - w / 2, METRICS)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(common.RESULTS / "objectives.png", dpi=100)
    md.append("![](objectives.png)\n")
    common.write("objectives", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
