"""Proxy fidelity: does the search's short run rank students the way a 10x longer run does?

    python experiments/benchmarks/proxy_fidelity.py [--long 2400 --seeds 3 --workers 2]
    python experiments/benchmarks/proxy_fidelity.py --students experiments/benchmarks/fresh_students.txt \
        --long-seeds 3 --lrs 0.002,0.004 --name proxy_fidelity_fresh

Pre-registered students (``--students FILE``, drawn with ``--sample`` and committed before
any of them is trained; the script refuses a list that is not committed as it stands): every
candidate short run (``--lrs``) over ``--seeds`` seeds (0, 1, ...) and ``--long-seeds`` long
runs (seeds 100, 101, ...: no long run shares a short run's initialisation; the truth is their
mean and their agreement with each other the ceiling); long runs checkpoint and resume after
a kill. The report (fidelity_report.py) gives, for each candidate, Kendall tau with bootstrap
intervals overall, within each image family and each text-tower kind, beside the zero-cost
family rules and the cheap baselines, with paired-bootstrap differences. Writes
experiments/results/<name>.{json,md,png}.

Without ``--students`` (the first measurements, kept as history): 18 fixed picks from the demo space and from `demo-plus.yaml` (the demo space
made slightly larger: deeper/wider ViTs, 64 px, test_convnext2, a student text tower),
both image families and both text-tower options. Each is distilled with the demo's
short run exactly as a search trial does it (experiments/demo.yaml: 240 steps, twice that
for a student with its own text tower (distill.text_tower_step_scale), scored by the final
evaluation on the search-validation split), over ``--seeds`` seeds, and once
with a ``--long``-step run (same recipe, warm-up 10%), scored on the held-out test split.
Cheap baselines: image-tower MACs and params, teacher agreement after the short run, the
training loss at step 20. Reports Kendall tau and Spearman rho with bootstrap 95%
intervals, the proxy-minus-baseline tau with a paired bootstrap interval, and the noise
that bounds them (the proxy's agreement with itself across seeds). Also scored: the image
tower alone against the teacher's text (``image_accuracy``). Writes
experiments/results/proxy_fidelity.{json,md,png}.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

import common

STUDENTS = [  # demo space (teacher text) ...
    "vit L1 W64 H2 mlp4 p16 @32px + text=teacher",
    "vit L1 W128 H2 mlp4 p8 @32px + text=teacher",
    "vit L1 W64 H2 mlp4 p8 @48px + text=teacher",
    "vit L2 W64 H2 mlp4 p8 @48px + text=teacher",
    "vit L2 W128 H2 mlp4 p16 @48px + text=teacher",
    "vit L2 W64 H2 mlp4 p16 @32px + text=teacher",
    "timm test_efficientnet @32px + text=teacher",
    "timm test_efficientnet @64px + text=teacher",
    "timm test_byobnet @32px + text=teacher",
    "timm test_byobnet @48px + text=teacher",
    # ... and the slightly larger demo-plus space: deeper/wider ViTs, 64 px, another convnet,
    "vit L3 W128 H2 mlp4 p16 @64px + text=teacher",
    "vit L2 W192 H2 mlp4 p16 @48px + text=teacher",
    "vit L3 W64 H2 mlp4 p8 @32px + text=teacher",
    "timm test_convnext2 @48px + text=teacher",
    # a student text tower (small transformer) on both families
    "vit L1 W64 H2 mlp4 p16 @32px + text L1 W64 H2 ctx32",
    "vit L2 W64 H2 mlp4 p16 @48px + text L2 W64 H2 ctx32",
    "timm test_byobnet @48px + text L1 W128 H2 ctx32",
    "timm test_efficientnet @32px + text L2 W128 H2 ctx32",
]
# Six more students that train their own text tower, fixed before any of them was run: they check,
# out of sample, the image-tower reading (image_accuracy) that was picked on the four above.
HOLDOUT = [
    "vit L1 W128 H2 mlp4 p8 @32px + text L2 W128 H2 ctx32",
    "vit L3 W64 H2 mlp4 p8 @32px + text L1 W128 H2 ctx32",
    "vit L2 W128 H2 mlp4 p16 @48px + text L1 W64 H2 ctx32",
    "timm test_convnext2 @48px + text L2 W64 H2 ctx32",
    "timm test_efficientnet @64px + text L1 W64 H2 ctx32",
    "timm test_byobnet @32px + text L2 W128 H2 ctx32",
]
PLUS_SPACE = common.ROOT / "experiments" / "benchmarks" / "demo-plus.yaml"
DEMO_SPACE = common.ROOT / "experiments" / "benchmarks" / "demo-22.yaml"  # the demo's space when this was measured


def resolve(names: list[str], embed_dim: int) -> list[tuple[object, str]]:
    """(StudentConfig, space name) for each ``describe()`` string."""
    from dime_nas.space import SearchSpace

    demo = {c.describe(): c for c in SearchSpace.load(DEMO_SPACE).grid(embed_dim=embed_dim)}
    plus = {c.describe(): c for c in SearchSpace.load(PLUS_SPACE).grid(embed_dim=embed_dim)}
    missing = [n for n in names if n not in plus and n not in demo]
    if missing:
        raise SystemExit(f"not in the demo or demo-plus space: {missing}")
    return [(demo[n], "demo") if n in demo else (plus[n], "demo-plus") for n in names]


def _two_places(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def image_cost(student) -> tuple[float, float]:
    """(image-tower MACs in millions at batch 1, image-tower params in millions)."""
    from dime_nas.cost.flops import count_macs, count_params
    from dime_nas.cost.towers import towers_from_student

    tower = towers_from_student(student)["image"]
    return count_macs(tower)[0] / 1e6, count_params(tower) / 1e6


def draw_students(a: argparse.Namespace) -> None:
    """``--sample``: draw a stratified random student list, excluding students already used, and write it."""
    import preregister
    from dime_nas.space import SearchSpace, resolve_space_path

    if not (a.students and a.space and a.draw_seed is not None and a.stratify):
        raise SystemExit("--sample needs --students FILE (written), --space, --draw-seed and --stratify family")
    if Path(a.students).exists():
        raise SystemExit(f"{a.students} exists: a drawn list is never redrawn in place")
    space = SearchSpace.load(resolve_space_path(a.space))
    quotas = preregister.parse_quotas(a.sample, space.kinds["image"])
    used = set(STUDENTS + HOLDOUT)  # every student of experiments/results/proxy_fidelity*.json before this draw
    students = preregister.draw(space, quotas, a.draw_seed, exclude=used)
    command = (f"python experiments/benchmarks/proxy_fidelity.py --sample {a.sample} --space {common.relative(a.space)} "
               f"--draw-seed {a.draw_seed} --stratify family --students {common.relative(a.students)}")
    preregister.write_students(a.students, students, [
        f"Drawn from {common.relative(a.space)} by its own random sampling (optuna RandomSampler, seed {a.draw_seed}),",
        "stratified by image family (" + ", ".join(f"{k} {v}" for k, v in quotas.items()) + f"), excluding the "
        f"{len(used)} students used before (proxy_fidelity.py's fixed lists) and repeats.",
        f"Redraw: {command}",
        "Committed before any of these students was trained."])
    print(f"wrote {len(students)} students to {a.students}: commit it, then run with --students {a.students}")


LONG_SEED0 = 100  # long runs use seeds 100, 101, ...: no long run shares a short run's initialisation (0, 1, ...)


def fresh_jobs(students: list, config, candidates: dict, seeds: int, long: int, long_seeds: list[int],
               cost: dict[str, float]) -> list[dict]:
    """The runs of a pre-registered fidelity run, in the order they start: every candidate's short
    runs (cheap: the proxy is known early), then the long runs one seed at a time (a partial run
    still has whole truths), most expensive student first within each group (an even finish)."""
    order = sorted(students, key=lambda s: -cost[s.arch_key])
    jobs = [common.short_job(s, cfg, key, k) for cfg, key in candidates.values() for k in range(seeds) for s in order]
    jobs += [common.job(common.long_key(s, long, seed, "dime-fm"), s, common.long_settings(config, long, seed),
                        splits=("test", "all"), checkpoint=True) for seed in long_seeds for s in order]
    return jobs


def run_preregistered(a: argparse.Namespace) -> None:
    """``--students FILE``: short runs of each candidate and ``--long-seeds`` long runs of every listed
    student, then the fidelity report (fidelity_report.py) for each candidate."""
    import fidelity_report
    import preregister

    try:
        registered = preregister.check_committed(a.students)
    except ValueError as exc:
        if not a.allow_uncommitted:
            raise SystemExit(f"{exc} (--allow-uncommitted: smoke runs only)")
        registered = None
    config, cache, _, _ = common.load(a.config)
    a.store = a.store or str(common.default_store(config))
    students = preregister.read_students(a.students, cache.embed_dim)[: a.limit]
    base = config.distill if a.short_steps is None else common.settings(
        config.distill, steps=a.short_steps, warmup_steps=max(1, a.short_steps // 10))
    if a.text_tower_step_scale is not None:
        base = common.settings(base, text_tower_step_scale=a.text_tower_step_scale)
    candidates = common.short_candidates(base, a.lrs, a.lr)
    a.long = a.long or 10 * base.steps
    long_seeds = [LONG_SEED0 + k for k in range(a.long_seeds)]
    cost = {s.arch_key: image_cost(s) for s in students}
    jobs = fresh_jobs(students, config, candidates, a.seeds, a.long, long_seeds, {k: v[0] for k, v in cost.items()})
    results = common.run_jobs(jobs, a.config, a.store, a.workers, a.threads)
    records = []
    for s in students:
        short = {name: [results[f"{key(s)}|seed{k}"] for k in range(a.seeds)] for name, (_, key) in candidates.items()}
        long = [results[common.long_key(s, a.long, seed, "dime-fm")] for seed in long_seeds]
        records.append({
            "arch_key": s.arch_key, "describe": s.describe(), "family": s.vision.kind, "text_kind": s.text.kind,
            "student": s.to_dict(), "image_mmacs": cost[s.arch_key][0], "image_params_m": cost[s.arch_key][1],
            "proxy": {n: [r["accuracy"] for r in rs] for n, rs in short.items()},
            "proxy_image": {n: [r["image_accuracy"] for r in rs] for n, rs in short.items()},
            "agreement_short": {n: float(np.mean([r["agreement"] for r in rs])) for n, rs in short.items()},
            "loss_step20": {n: float(np.mean([r["first_losses"][-1] for r in rs])) for n, rs in short.items()},
            "short_train_s": {n: [r["train_s"] for r in rs] for n, rs in short.items()},
            "full": [r["test/accuracy"] for r in long], "full_val": [r["accuracy"] for r in long],
            "full_all": [r["all/accuracy"] for r in long], "long_train_s": [r["train_s"] for r in long],
            "short_runs": short, "long_runs": long})
    setup = {"students_file": common.relative(a.students), "registered_in_commit": registered,
             "config": common.relative(a.config), "store": common.relative(a.store), "short_seeds": list(range(a.seeds)),
             "long_seeds": long_seeds, "long_steps": a.long, "short_steps": base.steps,
             "text_tower_step_scale": base.text_tower_step_scale, "batch": base.batch_size,
             "candidates": {n: {"lr": cfg.lr} for n, (cfg, _) in candidates.items()},
             "workers": a.workers, "threads": a.threads}
    data, md = fidelity_report.report(records, setup, common.machine())
    fidelity_report.plot(records, setup, common.RESULTS / f"{a.name}.png")
    common.write(a.name, data, md + f"\n![]({a.name}.png)\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(common.DEMO_YAML), help="experiment whose teacher, cache and short run are used")
    p.add_argument("--long", type=int, default=None, help="steps of the long run (default: 10x the short run's)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the short run")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--limit", type=int, default=None, help="use only the first N students (smoke runs)")
    p.add_argument("--short-steps", type=int, default=None,
                   help="override the short run's steps, warm-up 10%% (smoke runs; fidelity against the budget)")
    p.add_argument("--store", default=None,
                   help="resumable store of finished runs (default: the experiment's, runs/benchmarks/"
                        "runs-<hash>.jsonl, shared with objectives.py and search_efficiency.py)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="evaluate the short runs every N steps (compares readings of the proxy: final, mean of the "
                        "last evaluations, ...); the long runs are the same")
    p.add_argument("--lr", type=float, default=None, help="override the short run's peak learning rate")
    p.add_argument("--holdout", action="store_true", help="add the 6 held-out students with their own text tower")
    p.add_argument("--text-tower-step-scale", type=float, default=None,
                   help="override distill.text_tower_step_scale: the short run of a student with its own text "
                        "tower takes this many times the steps (1: the same short run for every student)")
    p.add_argument("--name", default="proxy_fidelity")
    g = p.add_argument_group("pre-registered students")
    g.add_argument("--students", default=None, help="student list file (one per line, describe() form or "
                   "StudentConfig JSON), committed before it is run; default: the fixed 18 (+6) students above")
    g.add_argument("--sample", default=None, help="draw a student list instead of running: N per image family, "
                   "or vit=N,timm=M; written to --students and nothing else is done")
    g.add_argument("--space", default=None, help="the space to draw from (with --sample)")
    g.add_argument("--draw-seed", type=int, default=None, help="seed of the draw (with --sample)")
    g.add_argument("--stratify", choices=["family"], default=None, help="quotas per image family (with --sample)")
    g.add_argument("--allow-uncommitted", action="store_true", help="run a list that is not committed (smoke runs)")
    g.add_argument("--long-seeds", type=int, default=1,
                   help=f"long runs per student (seeds {LONG_SEED0}, {LONG_SEED0 + 1}, ...): the truth is their mean, "
                        "and their agreement with each other the ceiling")
    g.add_argument("--lrs", default=None, help="candidate peak learning rates of the short run, e.g. 0.002,0.004, "
                   "each reported in full (default: --lr or the experiment's)")
    a = p.parse_args()
    if a.sample is not None:
        draw_students(a)
        return
    if a.students is not None:
        run_preregistered(a)
        return
    from dime_nas.search.stats import kendall_tau, rank_agreement, spearman_rho

    import bench_stats

    config, cache, _, _ = common.load(a.config)
    a.store = a.store or str(common.default_store(config))
    picks = resolve(STUDENTS[: a.limit] + (HOLDOUT if a.holdout else []), cache.embed_dim)
    short_cfg = config.distill if a.short_steps is None else common.settings(
        config.distill, steps=a.short_steps, warmup_steps=max(1, a.short_steps // 10))
    a.long = a.long or 10 * short_cfg.steps
    if a.eval_every:
        short_cfg = common.settings(short_cfg, eval_every=a.eval_every)
    if a.lr is not None:
        short_cfg = common.settings(short_cfg, lr=a.lr)
    if a.text_tower_step_scale is not None:
        short_cfg = common.settings(short_cfg, text_tower_step_scale=a.text_tower_step_scale)

    def short_of(s):
        """(settings, store key prefix) of a student's short run, as a search trial runs it."""
        cfg = short_cfg.for_student(s)
        tag = (f"|eval{cfg.eval_every}" if a.eval_every else "") + (f"|lr{a.lr:g}" if a.lr is not None else "")
        return cfg, f"{s.arch_key}|short{cfg.steps}{tag}"

    text_steps = next((short_of(s)[0].steps for s, _ in picks if s.text.kind != "teacher"), short_cfg.steps)
    jobs = []
    for s, _ in picks:
        jobs.append(common.job(common.long_key(s, a.long, 0, "dime-fm"), s, common.long_settings(config, a.long, 0),
                               splits=("test", "all")))
    for k in range(a.seeds):
        for s, _ in picks:
            cfg, key = short_of(s)
            jobs.append(common.job(f"{key}|seed{k}", s, common.settings(cfg, seed=k)))
    results = common.run_jobs(jobs, a.config, a.store, a.workers, a.threads)

    students = []
    for s, space in picks:
        short = [results[f"{short_of(s)[1]}|seed{k}"] for k in range(a.seeds)]
        full = results[common.long_key(s, a.long, 0, "dime-fm")]
        macs, params = image_cost(s)
        finals = [r["final_accuracy"] if "final_accuracy" in r  # runs stored before it was: mean of two evaluations
                  else 2 * r["accuracy"] - r["evals"][-1]["accuracy"] if r["evals"] else r["accuracy"] for r in short]
        students.append({
            "arch_key": s.arch_key, "describe": s.describe(), "space": space, "family": s.vision.kind,
            "holdout": s.describe() in HOLDOUT,
            "text": s.text.kind, "image_mmacs": macs, "image_params_m": params,
            "proxy": float(np.mean([r["accuracy"] for r in short])),
            "proxy_seeds": [r["accuracy"] for r in short],
            # the image tower against the teacher's class embeddings (= accuracy with the teacher's text tower)
            # (None: a run stored before image_accuracy was measured)
            "image_proxy_seeds": [r.get("image_accuracy", r["accuracy"] if s.text.kind == "teacher" else None)
                                  for r in short],
            "proxy_final_only_seeds": finals,
            "agreement_short": float(np.mean([r["agreement"] for r in short])),
            "loss_step20": float(np.mean([r["first_losses"][-1] for r in short])),
            "full": full["test/accuracy"], "full_val": full["accuracy"], "full_all": full["all/accuracy"],
            "short_train_s": float(np.mean([r["train_s"] for r in short])), "long_train_s": full["train_s"],
            "short_runs": short, "long_run": full})
    full = np.array([r["full"] for r in students])
    by_seed = np.array([r["proxy_seeds"] for r in students])
    image_key = f"image tower against the teacher's text (image_accuracy), mean of {a.seeds} seeds"
    image = [r["image_proxy_seeds"] for r in students]
    predictors = {
        f"proxy: short-run accuracy, mean of {a.seeds} seeds": by_seed.mean(1),
        "proxy: one seed (seed 0, what a search trial measures)": by_seed[:, 0],
        **({image_key: np.array(image, dtype=float).mean(1)} if all(None not in row for row in image) else {}),
        "image-tower MACs (more is better)": np.array([r["image_mmacs"] for r in students]),
        "image-tower params (more is better)": np.array([r["image_params_m"] for r in students]),
        "teacher agreement after the short run": np.array([r["agreement_short"] for r in students]),
        "training loss at step 20 (lower is better)": -np.array([r["loss_step20"] for r in students]),
    }
    names = list(predictors)
    table = {k: rank_agreement(v, full) for k, v in predictors.items()}
    per_seed_tau = [kendall_tau(by_seed[:, k], full) for k in range(a.seeds)]
    baselines = [k for k in names if not k.startswith(("proxy", "image tower"))]
    best_base = max(baselines, key=lambda k: table[k]["tau"])
    versus = {k: bench_stats.paired_difference_interval(kendall_tau, predictors[names[0]], predictors[k], full)
              for k in baselines}
    # noise that bounds the agreement
    seed_std = bench_stats.pooled_std(by_seed) if a.seeds > 1 else float("nan")
    noise = {
        "proxy_seed_std_pooled": seed_std,
        "proxy_seed_std_per_student": [float(np.std(r, ddof=1)) for r in by_seed] if a.seeds > 1 else [],
        "proxy_std_across_students": float(np.std(by_seed.mean(1), ddof=1)),
        "full_std_across_students": float(np.std(full, ddof=1)),
        "proxy_seed_vs_seed_tau": bench_stats.seed_agreement(kendall_tau, by_seed) if a.seeds > 1 else None,
        "tau_per_single_seed": per_seed_tau,
        "full_test_vs_val_tau": kendall_tau([r["full"] for r in students], [r["full_val"] for r in students]),
        "proxy_final_only_tau": kendall_tau(np.array([r["proxy_final_only_seeds"] for r in students]).mean(1), full),
        "proxy_vs_full_val_tau": kendall_tau(by_seed.mean(1), [r["full_val"] for r in students]),
        "proxy_vs_full_all_tau": kendall_tau(by_seed.mean(1), [r["full_all"] for r in students]),
    }
    # readings of the same short runs: which evaluation points the score averages
    steps = short_cfg.steps

    def points(r, eval_every):
        """Accuracy by evaluation point, the k-th evaluation of a longer run (its own text tower) at
        the step of a plain run's k-th, as the pruner sees them; the final one at ``steps``."""
        pts = {e["step"] // eval_every * short_cfg.eval_every: e["accuracy"] for e in r["evals"]}
        pts[steps] = r.get("final_accuracy", 2 * r["accuracy"] - r["evals"][-1]["accuracy"] if r["evals"] else r["accuracy"])
        return pts

    pts = [[points(r, short_of(s)[0].eval_every) for r in st["short_runs"]] for (s, _), st in zip(picks, students)]
    available = set.intersection(*(set(p) for row in pts for p in row))
    candidates = {f"step {steps} only": (steps,), f"mean of steps {steps // 2}, {steps}": (steps // 2, steps),
                  f"mean of steps {steps * 2 // 3}, {steps}": (steps * 2 // 3, steps),
                  f"mean of steps {steps * 5 // 6}, {steps}": (steps * 5 // 6, steps),
                  f"mean of steps {steps * 2 // 3}-{steps}": tuple(x for x in sorted(available) if x >= steps * 2 // 3),
                  f"step {steps // 2} only": (steps // 2,)}
    readings = {}
    for label, at in candidates.items():
        if not at or not set(at) <= available or any(v["steps"] == list(at) for v in readings.values()):
            continue
        m = np.array([[np.mean([p[x] for x in at]) for p in row] for row in pts])
        readings[label] = {"steps": list(at), **rank_agreement(m.mean(1), full),
                           "tau_single_seed": [kendall_tau(m[:, k], full) for k in range(m.shape[1])],
                           "seed_std_pooled": bench_stats.pooled_std(m) if m.shape[1] > 1 else float("nan"),
                           "self_tau": bench_stats.seed_agreement(kendall_tau, m)["mean"] if m.shape[1] > 1 else None}
    subsets = {}
    for label, keep in (("text=teacher only", [r["text"] == "teacher" for r in students]),
                        ("student text tower only", [r["text"] == "transformer" for r in students]),
                        ("ViT only", [r["family"] == "vit" for r in students]),
                        ("timm convnets only", [r["family"] == "timm" for r in students]),
                        ("text=teacher + held-out text towers", [r["text"] == "teacher" or r["holdout"]
                                                                 for r in students])):
        keep = np.array(keep)
        if keep.sum() >= 4 and not (label.startswith("text=teacher +") and not a.holdout):
            subsets[label] = {"n": int(keep.sum()), "tau": kendall_tau(by_seed.mean(1)[keep], full[keep]),
                              "tau_image": kendall_tau(predictors[image_key][keep], full[keep])
                              if image_key in predictors else None,
                              "tau_best_baseline": kendall_tau(predictors[best_base][keep], full[keep])}
    data = {"sizes": {**vars(a), "config": common.relative(a.config), "store": common.relative(a.store),
                      "short": short_cfg.steps, "text_tower_step_scale": short_cfg.text_tower_step_scale,
                      "short_with_text_tower": text_steps, "short_eval_every": short_cfg.eval_every,
                      "short_average_last_evals": short_cfg.average_last_evals, "batch": short_cfg.batch_size,
                      "students": len(students)},
            "machine": common.machine(), "students": students, "rank_agreement": table,
            "proxy_minus_baseline_tau": versus, "noise": noise, "subsets": subsets, "readings": readings,
            "definitions": {"proxy": "search-validation accuracy, mean of the evaluations at the short run's last "
                                     f"{short_cfg.average_last_evals} evaluation points, mean over seeds",
                            "full": f"test-split accuracy after {a.long} steps (seed 0), final model"}}
    md = [f"# Proxy fidelity\n\n{len(students)} students ({sum(r['space'] == 'demo' for r in students)} from the demo "
          f"space, {sum(r['space'] == 'demo-plus' for r in students)} from `demo-plus.yaml`; "
          f"{sum(r['family'] == 'vit' for r in students)} ViT / {sum(r['family'] == 'timm' for r in students)} timm convnets; "
          f"{sum(r['text'] == 'transformer' for r in students)} with a student text tower). Short run = "
          + ("the demo search's trial" if a.short_steps is None else "the demo search's trial with its steps changed")
          + f": {short_cfg.steps} steps at batch {short_cfg.batch_size}, score = "
          + (f"mean of the evaluations every {short_cfg.eval_every} steps (last {short_cfg.average_last_evals})"
             if short_cfg.eval_every and short_cfg.average_last_evals > 1 else "the final evaluation")
          + f" on the search-validation split, {a.seeds} seeds"
          + (f" ({text_steps} steps for students that train their own text tower)" if text_steps != short_cfg.steps
             else "")
          + f". Long run: {a.long} steps "
          f"({a.long / short_cfg.steps:.0f}x), same recipe, seed 0, scored on the held-out test split. "
          f"{a.workers} worker process(es) x {a.threads} thread(s).\n",
          "| predictor of long-run accuracy | Kendall tau [95% CI] | Spearman rho [95% CI] |", "|---|---|---|"]
    for k, t in table.items():
        md.append(f"| {k} | {t['tau']:.2f} [{t['tau_lo']:.2f}, {t['tau_hi']:.2f}] | "
                  f"{t['rho']:.2f} [{t['rho_lo']:.2f}, {t['rho_hi']:.2f}] |")
    md += ["", "Proxy (mean of seeds) minus baseline, Kendall tau, paired bootstrap over students:", "",
           "| baseline | tau difference [95% CI] | share of resamples where the proxy is not above |", "|---|---|---|"]
    md += [f"| {k} | {v['diff']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}] | {v['p_not_above']:.3f} |" for k, v in versus.items()]
    sa = noise["proxy_seed_vs_seed_tau"]
    md += ["", "Noise:", "",
           f"- proxy seed std (pooled RMS over students, {a.seeds} seeds): {seed_std:.4f}; spread of the proxy across "
           f"students (std of the means): {noise['proxy_std_across_students']:.3f}; of the long-run accuracy: "
           f"{noise['full_std_across_students']:.3f}",
           (f"- the proxy against itself (tau between two seeds, {sa['pairs']} pairs): mean {sa['mean']:.2f} "
            f"[{sa['min']:.2f}, {sa['max']:.2f}]" if sa else "- one seed: no self-agreement"),
           f"- tau of each single seed against the long run: " + ", ".join(f"{t:.2f}" for t in per_seed_tau),
           f"- long run, test split vs validation split (tau): {noise['full_test_vs_val_tau']:.2f}; proxy vs the long "
           f"run on the validation split: {noise['proxy_vs_full_val_tau']:.2f}, on all evaluation images: "
           f"{noise['proxy_vs_full_all_tau']:.2f}",
           f"- proxy read at the final step only (no averaging): tau {noise['proxy_final_only_tau']:.2f}", ""]
    if readings:
        md += ["Readings of the same short runs (which evaluation points the score averages):", "",
               "| reading | tau, mean of seeds [95% CI] | tau of single seeds | seed std (pooled) | tau seed vs seed |",
               "|---|---|---|---|---|"]
        md += [f"| {k} | {v['tau']:.2f} [{v['tau_lo']:.2f}, {v['tau_hi']:.2f}] | "
               f"{', '.join(f'{x:.2f}' for x in v['tau_single_seed'])} | {v['seed_std_pooled']:.4f} | "
               f"{v['self_tau'] if v['self_tau'] is None else round(v['self_tau'], 2)} |" for k, v in readings.items()]
        md.append("")
    if subsets:
        md += ["| subset | n | tau proxy | tau image_accuracy | tau best baseline |", "|---|---|---|---|---|"]
        md += [f"| {k} | {v['n']} | {v['tau']:.2f} | {_two_places(v['tau_image'])} | {v['tau_best_baseline']:.2f} |"
               for k, v in subsets.items()]
        md.append(f"\n(best baseline overall: {best_base})\n")
    md += ["| student | space | proxy (seeds) | long run (test) | MMACs | params M |", "|---|---|---|---|---|---|"]
    md += [f"| {r['describe']} | {r['space']} | {r['proxy']:.3f} ({', '.join(f'{x:.3f}' for x in r['proxy_seeds'])}) | "
           f"{r['full']:.3f} | {r['image_mmacs']:.1f} | {r['image_params_m']:.2f} |" for r in students]
    m = data["machine"]
    md.append(f"\nMachine: {m['cpu']}, {m['cores']} cores, shared (load average at the end {m['load_avg'][0]:.1f}); "
              f"torch {m['torch']}. Long runs took {np.mean([r['long_train_s'] for r in students]):.0f} s of training "
              f"on average, short runs {np.mean([r['short_train_s'] for r in students]):.1f} s.\n")
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for fam, mk in (("vit", "o"), ("timm", "s")):
        for text, col in (("teacher", "C0"), ("transformer", "C3")):
            sel = [r for r in students if r["family"] == fam and r["text"] == text]
            if sel:
                ax.errorbar([r["proxy"] for r in sel], [r["full"] for r in sel],
                            xerr=[np.std(r["proxy_seeds"], ddof=1) if len(r["proxy_seeds"]) > 1 else 0 for r in sel],
                            fmt=mk, c=col, label=f"{fam}, text={text}", capsize=2)
    t = table[names[0]]
    ax.set_title(f"tau {t['tau']:.2f} [{t['tau_lo']:.2f}, {t['tau_hi']:.2f}], n={len(students)}", fontsize=9)
    ax.set_xlabel(f"short-run proxy ({short_cfg.steps} steps" + (f", {text_steps} with a text tower" if text_steps
                  != short_cfg.steps else "") + f", mean of {a.seeds} seeds; bars: seed std)")
    ax.set_ylabel(f"long-run accuracy ({a.long} steps, test split)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(common.RESULTS / f"{a.name}.png", dpi=100)
    md.append(f"![]({a.name}.png)\n")
    common.write(a.name, data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
