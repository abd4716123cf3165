"""Can a weight-sharing supernet's score be trusted? Rank fidelity and cost on pre-registered students.

For each ViT student of a committed list (students the supernet was not tuned on) the
supernet's score (the validation accuracy of its inherited weights, after each fine-tune
length tried) is ranked against the truth: the mean test accuracy of 2,400-step stand-alone
runs over several seeds, read from a fidelity results file (``proxy_fidelity.py``'s
``students``: ``arch_key``, ``proxy`` per candidate and seed, ``full`` per seed). Beside it:
the short-run proxy's tau on the same students, and the truth's own seed-against-seed tau
(the ceiling), overall and within each text-tower kind.

Cost, measured in this one run: the supernet's training, the time to score one student
(extraction, fine-tune steps, evaluation), and short-run trials of some of the same
students (half timed before the supernet trains and half after, so a change in the
machine's load shows). Scores are kept in a resumable store; a killed run continues.

    python experiments/benchmarks/supernet_fidelity.py \\
        --students experiments/benchmarks/fresh_students.txt \\
        --truths experiments/results/proxy_fidelity_fresh.json --finetune 0,10,40 --default-finetune 0
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import common
from bench_stats import paired_difference_interval, seed_agreement

CONFIG = common.ROOT / "experiments" / "shapes-vit-supernet.yaml"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(CONFIG), help="the supernet experiment (its space, data and recipe)")
    p.add_argument("--students", required=True, help="committed student list (its ViT students are used)")
    p.add_argument("--truths", required=True, help="fidelity results JSON with proxy and full (per-seed) accuracies")
    p.add_argument("--proxy-candidate", default=None, help="which proxy of the truths file to show (default: first)")
    p.add_argument("--finetune", default="0,10,40", help="fine-tune lengths tried (steps, comma-separated)")
    p.add_argument("--default-finetune", type=int, default=0, help="the setting the headline reports (fixed beforehand)")
    p.add_argument("--cost-trials", type=int, default=6, help="short-run trials timed beside the supernet")
    p.add_argument("--name", default="supernet_fidelity", help="results file name")
    args = p.parse_args()

    import torch

    from preregister import read_students

    torch.set_num_threads(1)
    config, cache, _, space = common.load(args.config)
    students = [s for s in read_students(args.students, cache.embed_dim) if space.contains(s)]
    truths = {s["arch_key"]: _truth(s) for s in json.loads(Path(args.truths).read_text())["students"]}
    students = [s for s in students if s.arch_key in truths]
    lengths = sorted({int(x) for x in args.finetune.split(",")} | {args.default_finetune})
    print(f"{len(students)} students of the space with truths; fine-tune lengths {lengths}", flush=True)

    supernet, summary = _supernet(config, space, cache)
    # the cost side by side: the supernet's recorded training time spans whatever load the machine had
    # while it trained (and any kills), so its steps are timed again here between the short-run trials
    timed = students[:args.cost_trials]
    short = [_short_trial(s, config, cache) for s in timed[: len(timed) // 2]]
    step_s = common.supernet_step_s(config, space, cache)
    short += [_short_trial(s, config, cache) for s in timed[len(timed) // 2:]]
    store = common.ROOT / "runs" / "benchmarks" / f"supernet-scores-{Path(summary['folder']).name}.jsonl"
    scores = _scores(students, lengths, supernet, config, cache, store)

    data = _results(students, truths, scores, lengths, args, summary, step_s, short)
    common.write(args.name, data, _markdown(data))
    return 0


def _truth(student: dict[str, Any]) -> dict[str, Any]:
    """A fidelity file's student with ``proxy`` as {candidate: per-seed scores} and ``full`` as per-seed
    accuracies (files written before several long seeds and candidates hold one number for each)."""
    proxy, full = student["proxy"], student["full"]
    if not isinstance(proxy, dict):
        proxy = {"default": student.get("proxy_seeds", [proxy])}
    return {**student, "proxy": proxy, "full": full if isinstance(full, list) else [full]}


def _supernet(config: Any, space: Any, cache: Any) -> tuple[Any, dict[str, Any]]:
    from dime_nas.supernet.store import load_or_train, supernet_dir

    net = load_or_train(config, space, cache, progress=True)
    folder = supernet_dir(config, space)
    return net, {"folder": str(folder), **json.loads((folder / "summary.json").read_text())}


def _short_trial(student: Any, config: Any, cache: Any) -> dict[str, Any]:
    """One short-run trial's training and evaluation, as a short_distill search runs it."""
    from dime_nas.distill.trainer import distill
    from dime_nas.evaluate import evaluate_towers

    t0, c0 = time.time(), time.process_time()
    towers, result = distill(student, cache, config.distill.for_student(student), final_eval=False)
    train_s, train_cpu_s = time.time() - t0, time.process_time() - c0
    t0, c0 = time.time(), time.process_time()
    accuracy = evaluate_towers(towers, cache)["accuracy"]
    out = {"arch_key": student.arch_key, "describe": student.describe(), "steps": result.steps,
           "train_s": train_s, "eval_s": time.time() - t0, "cpu_s": train_cpu_s + time.process_time() - c0,
           "accuracy": accuracy, "load_avg": list(os.getloadavg())}
    print(f"short trial {student.describe()}: {train_s + out['eval_s']:.1f} s", flush=True)
    return out


def _scores(students: list, lengths: list[int], supernet: Any, config: Any, cache: Any, store: Path
            ) -> dict[tuple[str, int], dict[str, Any]]:
    """Each student's supernet score at each fine-tune length (as a trial scores it), from the store
    or measured now."""
    import dataclasses

    from dime_nas.search.evaluators import finetune_settings, score_subnet

    done = {(r["arch_key"], r["finetune"]): r for r in common.read_records(store)}
    store.parent.mkdir(parents=True, exist_ok=True)
    with store.open("a") as f:
        for s in students:
            for n in lengths:
                if (s.arch_key, n) in done:
                    continue
                settings = finetune_settings(dataclasses.replace(
                    config, supernet=dataclasses.replace(config.supernet, finetune_steps=n)))
                t0, c0 = time.time(), time.process_time()
                scored = score_subnet(supernet, s, cache, settings)
                r = {"arch_key": s.arch_key, "finetune": n, "accuracy": scored.metrics["accuracy"],
                     "image_accuracy": scored.metrics["image_accuracy"], "score_s": time.time() - t0,
                     "score_cpu_s": time.process_time() - c0,
                     "timings": scored.timings}
                done[(s.arch_key, n)] = r
                f.write(json.dumps(r) + "\n")
                f.flush()
                print(f"{s.describe()} finetune {n}: {r['accuracy']:.3f} ({r['score_s']:.2f} s)", flush=True)
    return done


def _tau_row(score: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from dime_nas.search.stats import rank_agreement

    return rank_agreement(score, truth) if len(score) >= 3 else {"tau": float("nan"), "n": len(score)}


def _results(students, truths, scores, lengths, args, summary, step_s, short) -> dict[str, Any]:
    from dime_nas.search.stats import kendall_tau

    first = truths[students[0].arch_key]
    candidate = args.proxy_candidate or next(iter(first["proxy"]))
    rows = []
    for s in students:
        t = truths[s.arch_key]
        rows.append({"arch_key": s.arch_key, "describe": s.describe(), "text_kind": s.text.kind,
                     "supernet": scores[(s.arch_key, args.default_finetune)]["accuracy"],
                     "supernet_by_finetune": {str(n): scores[(s.arch_key, n)]["accuracy"] for n in lengths},
                     "proxy": float(np.mean(t["proxy"][candidate])), "full": list(t["full"])})
    truth = np.array([np.mean(r["full"]) for r in rows])
    groups = {"all": np.ones(len(rows), bool)}
    for kind in ("teacher", "transformer"):
        groups[f"text={kind}"] = np.array([r["text_kind"] == kind for r in rows])
    table = {}
    for name, mask in groups.items():
        entry = {f"supernet, fine-tune {n}": _tau_row(np.array([r["supernet_by_finetune"][str(n)] for r in rows])[mask],
                                                        truth[mask]) for n in lengths}
        entry["short-run proxy"] = _tau_row(np.array([r["proxy"] for r in rows])[mask], truth[mask])
        full = np.array([r["full"] for r in rows])[mask]
        entry["ceiling (truth seed vs seed)"] = seed_agreement(kendall_tau, full) if full.shape[1] > 1 else {}
        table[name] = entry
    sup = np.array([r["supernet"] for r in rows])
    proxy = np.array([r["proxy"] for r in rows])
    # CPU seconds (one torch thread throughout): what each costs, whatever else the machine ran meanwhile
    per_student = [scores[(r["arch_key"], args.default_finetune)]["score_cpu_s"] for r in rows]
    short_s = [t["cpu_s"] for t in short]
    train_s = step_s["cpu"] * summary["steps"]
    cost = {"seconds": "CPU", "supernet_train_s": train_s, "supernet_step_s": step_s,
            "supernet_train_s_recorded": summary["train_s"], "per_student_s": float(np.median(per_student)),
            "short_trial_s": float(np.median(short_s)) if short_s else float("nan"),
            "per_student_s_all": per_student, "short_trials": short, "supernet_steps": summary["steps"]}
    cost["train_over_short_trial"] = train_s / cost["short_trial_s"]
    cost["short_trial_over_per_student"] = cost["short_trial_s"] / cost["per_student_s"]
    return {"students": rows, "default_finetune": args.default_finetune, "finetune_lengths": lengths,
            "proxy_candidate": candidate, "tau": table,
            "supernet_minus_proxy": paired_difference_interval(kendall_tau, sup, proxy, truth),
            "cost": cost, "supernet": {k: summary[k] for k in ("folder", "steps", "train_s", "reached", "identity")},
            "sources": {"students": common.relative(args.students), "truths": common.relative(args.truths),
                        "config": common.relative(args.config)},
            "machine": common.machine()}


def _fmt_tau(r: dict[str, float]) -> str:
    if not r or r.get("tau") is None or np.isnan(r.get("tau", np.nan)):
        return f"{r.get('mean', float('nan')):.2f} (mean of {r.get('pairs', 0)} pairs)" if "mean" in r else "-"
    return f"{r['tau']:.2f} [{r['tau_lo']:.2f}, {r['tau_hi']:.2f}]"


def _markdown(d: dict[str, Any]) -> str:
    c = d["cost"]
    lines = ["# Supernet fidelity", "",
             f"{len(d['students'])} pre-registered ViT students ({d['sources']['students']}); truth: mean test "
             f"accuracy of their stand-alone 2,400-step runs ({d['sources']['truths']}). Supernet score: validation "
             f"accuracy of the inherited weights; the default setting is {d['default_finetune']} fine-tune steps.", "",
             "| predictor | " + " | ".join(d["tau"]) + " |", "|---|" + "---|" * len(d["tau"])]
    for name in next(iter(d["tau"].values())):
        lines.append(f"| {name} | " + " | ".join(_fmt_tau(d["tau"][g][name]) for g in d["tau"]) + " |")
    diff = d["supernet_minus_proxy"]
    lines += ["", f"Supernet (default) minus short-run proxy, Kendall tau: {diff['diff']:+.2f} "
                  f"[{diff['lo']:+.2f}, {diff['hi']:+.2f}] (paired bootstrap over students).", "",
              "## Cost (measured in one run)", "",
              "CPU seconds of one torch thread (wall time moved with the machine's other work):", "",
              f"- supernet training: {c['supernet_steps']} steps x {c['supernet_step_s']['cpu']:.2f} s (timed between "
              f"the short-run trials) = {c['supernet_train_s']:.0f} s = {c['train_over_short_trial']:.1f} short-run "
              f"trials (its recorded wall time, under other loads: {c['supernet_train_s_recorded']:.0f} s)",
              f"- scoring one student (median; fine-tuning, if any, and evaluation): {c['per_student_s']:.2f} s; "
              f"a short-run trial (median of {len(c['short_trials'])}): {c['short_trial_s']:.1f} s, "
              f"{c['short_trial_over_per_student']:.0f}x as long",
              f"- machine: {d['machine']['cpu']}, {d['machine']['cores']} cores, load average "
              f"{', '.join(f'{x:.1f}' for x in d['machine']['load_avg'])} at the end", "",
              "| student | text | supernet | proxy | truth (seeds) |", "|---|---|---|---|---|"]
    for r in d["students"]:
        lines.append(f"| {r['describe']} | {r['text_kind']} | {r['supernet']:.3f} | {r['proxy']:.3f} | "
                     f"{np.mean(r['full']):.3f} ({', '.join(f'{x:.3f}' for x in r['full'])}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
