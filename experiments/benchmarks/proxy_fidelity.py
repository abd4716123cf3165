"""Proxy fidelity: does the short run rank students the way a >= 10x longer run does?

    python experiments/benchmarks/proxy_fidelity.py [--students 16 --short 150 --long 1500 --seeds 2]

Writes experiments/results/proxy_fidelity.{json,md,png}: per student the short-run
accuracy (mean over seeds), the long-run accuracy, and cheap baselines (params,
agreement after the short run, loss after a few steps); Kendall tau / Spearman rho
with bootstrap 95% intervals for each predictor against the long-run accuracy.
"""
from __future__ import annotations

import argparse

import numpy as np

import common


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", type=int, default=6)
    p.add_argument("--short", type=int, default=12, help="steps of the short (proxy) run")
    p.add_argument("--long", type=int, default=120, help="steps of the long run")
    p.add_argument("--seeds", type=int, default=2, help="seeds of the short run")
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    from dime_nas.distill.trainer import StudentTowers
    from dime_nas.search.stats import rank_agreement

    config, cache, _, space = common.load()
    base = common.settings(config.distill, batch_size=a.batch, text_batch_size=a.batch)
    students = []
    for s in common.spread_students(space, cache.embed_dim, a.students, seed=1):
        short = [common.run(s, cache, common.settings(base, steps=a.short, warmup_steps=max(1, a.short // 10),
                                                      seed=k)) for k in range(a.seeds)]
        full = common.run(s, cache, common.settings(base, steps=a.long, warmup_steps=max(1, a.long // 10), seed=100))
        row = {"arch_key": s.arch_key, "describe": s.describe(), "text": s.text.kind,
               "params_m": sum(q.numel() for q in StudentTowers(s).visual.parameters()) / 1e6,
               "proxy": float(np.mean([r["accuracy"] for r in short])),
               "proxy_seeds": [r["accuracy"] for r in short],
               "agreement_short": float(np.mean([r["agreement"] for r in short])),
               "early_loss": float(np.mean([r["first_losses"][-1] for r in short])),
               "full": full["accuracy"], "full_metrics": {k: v for k, v in full.items() if k != "evals"},
               "short_runs": short}
        students.append(row)
        print(row["describe"], row["proxy"], row["full"], flush=True)
    full = [r["full"] for r in students]
    predictors = {"proxy (short-run accuracy)": [r["proxy"] for r in students],
                  "params (bigger is better)": [r["params_m"] for r in students],
                  "agreement after short run": [r["agreement_short"] for r in students],
                  "loss after 10 steps (lower is better)": [-r["early_loss"] for r in students]}
    table = {k: rank_agreement(v, full) for k, v in predictors.items()}
    data = {"sizes": vars(a), "students": students, "rank_agreement": table,
            "note": "measured on a shared, busy 2-core CPU"}
    md = [f"# Proxy fidelity\n\n{a.students} students, short run {a.short} steps x {a.seeds} seeds, long run "
          f"{a.long} steps (1 seed), batch {a.batch}; ShapesWorld demo teacher and data. The issue asks for >= 16 "
          "students at the demo's 150 steps vs >= 1500; this run is smaller (2-core shared machine).\n",
          "| predictor | tau [95% CI] | rho [95% CI] |", "|---|---|---|"]
    for k, t in table.items():
        md.append(f"| {k} | {t['tau']:.2f} [{t['tau_lo']:.2f}, {t['tau_hi']:.2f}] | "
                  f"{t['rho']:.2f} [{t['rho_lo']:.2f}, {t['rho_hi']:.2f}] |")
    md += ["", "| student | text | proxy | full |", "|---|---|---|---|"]
    md += [f"| {r['describe']} | {r['text']} | {r['proxy']:.3f} | {r['full']:.3f} |" for r in students]
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([r["proxy"] for r in students], full)
    ax.set_xlabel(f"short-run accuracy ({a.short} steps)")
    ax.set_ylabel(f"long-run accuracy ({a.long} steps)")
    fig.tight_layout()
    fig.savefig(common.RESULTS / "proxy_fidelity.png", dpi=100)
    md.append("\n![](proxy_fidelity.png)\n")
    common.write("proxy_fidelity", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
