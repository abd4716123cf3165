"""Seed noise of the short-run accuracy proxy, and of the evaluation's own sampling.

    python experiments/benchmarks/seed_noise.py [--students 4 --seeds 5 --steps 150 --batch 64]

For students spread over the demo space, the short run is repeated over seeds (data
order and initialisation). Two readings of the same runs are compared: the final
accuracy (the search's proxy today) and the mean of the last K evaluations
(evaluating every ``--every`` steps). Also reported: the binomial standard error of
the evaluation set itself and the smallest accuracy difference the proxy resolves
(1.96 * sqrt(2) * seed std). Writes experiments/results/seed_noise.{json,md,png}.
"""
from __future__ import annotations

import argparse
import math

import numpy as np

import common


TARGET_STD = 0.01


def pick_per_group(students: list, n: int) -> list:
    """The first ``n`` students of each (image family, text kind) group, in list order (fixed before any run)."""
    counts: dict[tuple[str, str], int] = {}
    picked = []
    for s in students:
        group = (s.vision.kind, s.text.kind)
        if counts.get(group, 0) < n:
            counts[group] = counts.get(group, 0) + 1
            picked.append(s)
    return picked


def run_preregistered(a: argparse.Namespace) -> None:
    """``--students FILE``: seed std of what a search trains, per candidate, over ``--seeds`` seeds."""
    import preregister

    config, cache, _, _ = common.load(a.config)
    store = a.store or str(common.default_store(config))
    base = config.distill if a.text_tower_step_scale is None else common.settings(
        config.distill, text_tower_step_scale=a.text_tower_step_scale)
    candidates = common.short_candidates(base, a.lrs, a.lr)
    students = pick_per_group(preregister.read_students(a.students, cache.embed_dim), a.per_group)
    jobs = [common.short_job(s, cfg, key, k) for cfg, key in candidates.values() for k in range(a.seeds)
            for s in students]
    results = common.run_jobs(jobs, a.config, store, a.workers, 1)
    groups = {"all": lambda s: True, "ViT": lambda s: s.vision.kind == "vit",
              "convnet": lambda s: s.vision.kind == "timm", "teacher's text": lambda s: s.text.kind == "teacher",
              "own text tower": lambda s: s.text.kind == "transformer"}
    out = {"setup": {"students_file": common.relative(a.students), "per_group": a.per_group, "seeds": a.seeds,
                     "config": common.relative(a.config), "store": common.relative(store),
                     "short_steps": base.steps, "text_tower_step_scale": base.text_tower_step_scale,
                     "candidates": {n: {"lr": cfg.lr} for n, (cfg, _) in candidates.items()}},
           "machine": common.machine(), "candidates": {}}
    md = [f"# Seed noise of what a search trains\n\n{len(students)} students of `{common.relative(a.students)}` "
          f"(the first {a.per_group} of each image family and text kind, in list order) x {a.seeds} seeds, each run "
          f"as a search trial runs it ({base.steps} steps, {base.text_tower_step_scale:g}x for a student with its own "
          f"text tower, scored by the final evaluation). Target: seed std <= {TARGET_STD}.\n"]
    for name, (cfg, key) in candidates.items():
        rows = []
        for s in students:
            accs = [results[f"{key(s)}|seed{k}"]["accuracy"] for k in range(a.seeds)]
            rows.append({"arch_key": s.arch_key, "describe": s.describe(), "family": s.vision.kind,
                         "text_kind": s.text.kind, "accuracy": accs, "mean": float(np.mean(accs)),
                         "std": float(np.std(accs, ddof=1)),
                         "train_s": [results[f"{key(s)}|seed{k}"]["train_s"] for k in range(a.seeds)]})
        pooled = {g: float(math.sqrt(np.mean([r["std"] ** 2 for r, s in zip(rows, students) if f(s)])))
                  for g, f in groups.items() if any(f(s) for s in students)}
        need = math.ceil((pooled["all"] / TARGET_STD) ** 2)
        mean_of = {}
        for k in (2, 3, 5):  # a trial scored by the mean of k seeds, measured on disjoint groups of k seeds
            if a.seeds // k >= 2:
                stds = [float(np.std(np.reshape(r["accuracy"][: a.seeds // k * k], (-1, k)).mean(1), ddof=1))
                        for r in rows]
                mean_of[k] = {"measured": float(math.sqrt(np.mean(np.square(stds)))),
                              "predicted": pooled["all"] / math.sqrt(k)}
        train_s = float(np.median([x for r in rows for x in r["train_s"]]))
        out["candidates"][name] = {"lr": cfg.lr, "students": rows, "pooled_std": pooled,
                                   "resolvable_difference": 1.96 * math.sqrt(2) * pooled["all"],
                                   "seeds_to_meet_target": need, "mean_of_k_seeds_std": mean_of,
                                   "median_short_run_s": train_s}
        md += [f"## Candidate {name}\n", "| student | mean acc | seed std |", "|---|---|---|"]
        md += [f"| {r['describe']} | {r['mean']:.3f} | {r['std']:.4f} |" for r in rows]
        md += ["", "Seed std pooled (RMS over students): " + ", ".join(f"{g} {v:.4f}" for g, v in pooled.items())
               + f". Resolvable accuracy difference between two trials (1.96 x sqrt 2 x std): "
               f"{1.96 * math.sqrt(2) * pooled['all']:.3f}. Target <= {TARGET_STD}: "
               + ("met." if pooled["all"] <= TARGET_STD else
                  f"missed by {pooled['all'] - TARGET_STD:.4f}; meeting it takes the mean of {need} seeds "
                  f"(distill.seeds: {need}), {need}x the trial's training time (median {train_s:.0f} s a run on this "
                  "machine).")]
        if mean_of:
            md.append("Measured on disjoint groups of seeds, a trial scored by the mean of k seeds: " + "; ".join(
                f"k={k}: std {v['measured']:.4f} (std / sqrt k: {v['predicted']:.4f})" for k, v in mean_of.items())
                + ".")
        md.append("")
    m = out["machine"]
    md.append(f"Accuracies do not depend on machine load. Machine: {m['cpu']}, {m['cores']} cores, shared.\n")
    common.write(a.name, out, "\n".join(md) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", default="4", help="a number of students spread over the experiment's space, or a "
                   "student list file (pre-registered: each student run exactly as a search trial runs it, "
                   "--steps, --batch, --every and --last unused; runs shared with proxy_fidelity.py --students)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--every", type=int, default=5, help="evaluate every N steps (for the last-K average)")
    p.add_argument("--last", type=int, default=3, help="K: evaluations averaged at the end")
    p.add_argument("--mean-of", type=int, default=1,
                   help="K > 1: also the seed std of a trial scored by the mean of K seeds (distill.seeds: K), "
                        "measured over disjoint groups of K of the --seeds seeds")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the experiment's)")
    p.add_argument("--text-tower-step-scale", type=float, default=None,
                   help="override distill.text_tower_step_scale (1: students with their own text tower train "
                        "--steps too)")
    p.add_argument("--config", default=str(common.BENCH_YAML), help="benchmark experiment file")
    p.add_argument("--name", default="seed_noise", help="output name under experiments/results/")
    g = p.add_argument_group("a student list file (--students FILE)")
    g.add_argument("--per-group", type=int, default=2,
                   help="the first N students of the list in each (image family, text kind) group")
    g.add_argument("--lrs", default=None, help="candidate peak learning rates, e.g. 0.002,0.004 (default: --lr or "
                   "the experiment's)")
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--store", default=None, help="resumable run store (default: the experiment's)")
    a = p.parse_args()
    if not a.students.isdigit():
        run_preregistered(a)
        return
    a.students = int(a.students)
    config, cache, _, space = common.load(a.config)
    counts = common.eval_counts(cache)
    ind_tasks = [t.name for t in cache.tasks() if not t.shifted]
    cfg = common.settings(config.distill, steps=a.steps, warmup_steps=max(1, a.steps // 10), batch_size=a.batch,
                          text_batch_size=a.batch, eval_every=a.every,
                          lr=a.lr or config.distill.lr, text_tower_step_scale=config.distill.text_tower_step_scale
                          if a.text_tower_step_scale is None else a.text_tower_step_scale)
    rows = []
    for s in common.spread_students(space, cache.embed_dim, a.students, seed=2):
        runs = []
        for seed in range(a.seeds):
            r = common.run(s, cache, common.settings(cfg, seed=seed).for_student(s))  # as a search trial runs it
            points = [e["accuracy"] for e in r["evals"]] + [r["accuracy"]]
            se = math.sqrt(sum(common.binomial_se(r[f"task/{t}/top1"], counts[t]) ** 2 for t in ind_tasks)) / len(ind_tasks)
            runs.append({"seed": seed, "final": r["accuracy"], "last_k_mean": float(np.mean(points[-a.last:])),
                         "eval_points": points, "eval_se": se, "train_s": r["train_s"]})
        final, lastk = [x["final"] for x in runs], [x["last_k_mean"] for x in runs]
        rows.append({"arch_key": s.arch_key, "describe": s.describe(), "text": s.text.kind, "runs": runs,
                     "final_mean": float(np.mean(final)), "final_std": float(np.std(final, ddof=1)),
                     "last_k_mean": float(np.mean(lastk)), "last_k_std": float(np.std(lastk, ddof=1)),
                     "eval_se": float(np.mean([x["eval_se"] for x in runs]))})
        groups = len(final) // a.mean_of
        if a.mean_of > 1 and groups >= 2:
            rows[-1]["mean_of_k_std"] = float(np.std(np.reshape(final[:groups * a.mean_of], (groups, a.mean_of)).mean(1),
                                                     ddof=1))
        print(rows[-1]["describe"], rows[-1]["final_std"], rows[-1]["last_k_std"], flush=True)
    pooled = {k: float(math.sqrt(np.mean([r[k] ** 2 for r in rows]))) for k in ("final_std", "last_k_std", "eval_se",
                                                                              "mean_of_k_std") if k in rows[0]}
    data = {"sizes": vars(a), "eval_images_per_task": counts, "students": rows, "pooled": pooled,
            "note": "accuracies do not depend on machine load"}
    md = [f"# Seed noise of the proxy\n\n{a.students} students x {a.seeds} seeds, {a.steps} steps at batch {a.batch} "
          + (f"({cfg.text_tower_step_scale:g}x the steps and evaluation interval for a student with its own text "
             "tower) " if any(r["text"] != "teacher" for r in rows) and cfg.text_tower_step_scale != 1 else "")
          + f"(the experiment's short run: {config.distill.steps} steps at batch {config.distill.batch_size}). "
          f"Experiment: {a.config.split('/')[-1]}. Evaluation: {sum(counts[t] for t in ind_tasks)} in-distribution images over {len(ind_tasks)} tasks.\n",
          f"| student | mean acc | seed std (final) | seed std (mean of last {a.last} evals, every {a.every}) "
          "| eval binomial SE |", "|---|---|---|---|---|"]
    md += [f"| {r['describe']} | {r['final_mean']:.3f} | {r['final_std']:.4f} | {r['last_k_std']:.4f} | "
           f"{r['eval_se']:.4f} |" for r in rows]
    md.append(f"| pooled (RMS) | | {pooled['final_std']:.4f} | {pooled['last_k_std']:.4f} | {pooled['eval_se']:.4f} |")
    md.append(f"\nSmallest resolvable accuracy difference (1.96 x sqrt 2 x pooled seed std): final "
              f"{1.96 * math.sqrt(2) * pooled['final_std']:.3f}, last-{a.last} mean "
              f"{1.96 * math.sqrt(2) * pooled['last_k_std']:.3f}. Target: seed std <= 0.01.\n")
    if "mean_of_k_std" in pooled:
        md.append(f"A trial scored by the mean of {a.mean_of} seeds (`distill.seeds: {a.mean_of}`), measured over "
                  f"{a.seeds // a.mean_of} disjoint groups of {a.mean_of} seeds per student: seed std "
                  + ", ".join(f"{r['mean_of_k_std']:.4f}" for r in rows)
                  + f"; pooled {pooled['mean_of_k_std']:.4f} (final-reading std / sqrt {a.mean_of}: "
                  f"{pooled['final_std'] / math.sqrt(a.mean_of):.4f}).\n")
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["runs"]), [x["final"] for x in r["runs"]], c="C0", label="final" if i == 0 else None)
        ax.scatter([i + 0.2] * len(r["runs"]), [x["last_k_mean"] for x in r["runs"]], c="C1",
                   label=f"last-{a.last} mean" if i == 0 else None)
    ax.set_xticks(range(len(rows)), [r["describe"][:18] for r in rows], rotation=20, fontsize=7)
    ax.set_ylabel("accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(common.RESULTS / f"{a.name}.png", dpi=100)
    md.append(f"![]({a.name}.png)\n")
    common.write(a.name, data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
