"""At equal time, which search finds the better front: the supernet's or short distillations'?

Two searches over one space, back to back on this machine, one thread each:
1. the supernet search of the experiment (``search.evaluator: supernet``, ``--trials`` trials);
   its time is the supernet's training plus the search's own;
2. a short-distill search of the same experiment, stopped after that same CPU time (one torch
   thread each; CPU time, not wall time, so that the machine's other work cannot tilt it).
Each search's front (its feasible Pareto-optimal students, accuracy against measured latency)
is then distilled stand-alone for ``--steps`` steps, and each front's hypervolume is computed
on those true test accuracies and the trials' measured latencies, against one reference
point (accuracy 0, the latency budget). Searches continue after a kill (Optuna studies in
their run folders), as do the long runs (a resumable store).

    python experiments/benchmarks/supernet_fronts.py --trials 1000
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

import common

CONFIG = common.ROOT / "experiments" / "shapes-vit-supernet.yaml"
OUT = common.ROOT / "runs" / "benchmarks"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--trials", type=int, default=1000, help="trials of the supernet search")
    p.add_argument("--steps", type=int, default=2400, help="steps of each front member's stand-alone run")
    p.add_argument("--name", default="supernet_fronts")
    args = p.parse_args()

    import dataclasses

    import torch

    from dime_nas import api
    from dime_nas.supernet.store import supernet_dir

    torch.set_num_threads(1)
    config, cache, _, space = common.load(args.config)
    config.search = dataclasses.replace(config.search, trials=args.trials, max_trials=3 * args.trials)
    spent_file = OUT / "fronts-cpu.json"  # CPU seconds each search has spent, kept across a kill
    spent = json.loads(spent_file.read_text()) if spent_file.is_file() else {"supernet": 0.0, "short": 0.0}

    def account(name: str, call):
        c0 = time.process_time()
        try:
            return call()
        finally:
            spent[name] += time.process_time() - c0
            spent_file.write_text(json.dumps(spent))

    supernet = account("supernet", lambda: api.search(config, out=OUT / "fronts-supernet", progress=False))
    search_cpu_s = spent["supernet"]
    summary = json.loads((supernet_dir(config, space) / "summary.json").read_text())
    # equal CPU time (one torch thread): the machine's other work moves wall time, not CPU time; the
    # supernet's training is its steps timed again here (its recorded wall time spans other loads)
    step = common.supernet_step_s(config, space, cache)
    budget_cpu_s = step["cpu"] * summary["steps"] + search_cpu_s
    print(f"supernet search: {supernet.distinct} students, {search_cpu_s:.0f} CPU s; supernet training "
          f"{summary['steps']} x {step['cpu']:.2f} CPU s: the short-distill search gets {budget_cpu_s:.0f} CPU s", flush=True)
    short_cfg = dataclasses.replace(config, search=dataclasses.replace(
        config.search, evaluator="short_distill", trials=None, max_trials=None))
    short_cfg.full_distill = dataclasses.replace(config.full_distill, init="scratch")
    short = None
    while short is None or budget_cpu_s - spent["short"] > 5:  # a wall limit of the CPU left, until it is spent
        short_cfg.search = dataclasses.replace(short_cfg.search, timeout_s=max(1.0, budget_cpu_s - spent["short"]))
        short = account("short", lambda: api.search(short_cfg, out=OUT / "fronts-short", progress=False))
    short_cpu_s = spent["short"]
    store = common.default_store(config)
    searches = {"supernet": supernet, "short_distill": short}
    fronts = {name: _front(o.study) for name, o in searches.items()}
    members = [m for front in fronts.values() for m in front]
    jobs = {m["arch_key"]: common.job(common.long_key(_student(m), args.steps, 0, "dime-fm"), _student(m),
                                      common.long_settings(config, args.steps, seed=0), splits=("test",))
            for m in members}
    results = common.run_jobs(list(jobs.values()), args.config, store, workers=2)
    budget = next(b.value for b in config.budget_list if b.metric == "latency_ms")
    out = {"searches": {}, "reference": [0.0, budget], "steps": args.steps, "machine": common.machine()}
    for name, front in fronts.items():
        for m in front:
            m["true_accuracy"] = results[jobs[m["arch_key"]]["key"]]["test/accuracy"]
        pts = np.array([[m["true_accuracy"], m["latency_ms"]] for m in front]) if front else np.zeros((0, 2))
        out["searches"][name] = {"distinct": searches[name].distinct, "seconds": searches[name].search_seconds,
                                 "front": front, "hv_true": _hv(pts, budget), "hv_proxy": _hv(np.array(
                                     [[m["score"], m["latency_ms"]] for m in front]) if front else pts, budget)}
    out["searches"]["supernet"].update(cpu_s=search_cpu_s, supernet_train_cpu_s=step["cpu"] * summary["steps"],
                                       supernet_step_s=step, supernet_train_s_recorded=summary["train_s"])
    out["searches"]["short_distill"]["cpu_s"] = short_cpu_s
    common.write(args.name, out, _markdown(out))
    return 0


def _front(study: Any) -> list[dict[str, Any]]:
    """The feasible Pareto-optimal students of a finished study: accuracy (its score) and latency."""
    from dime_nas.search.pareto import non_dominated
    from dime_nas.search.record import TrialRecord

    rows = [TrialRecord.from_trial(t) for t in study.trials]
    ok = [r for r in rows if r.status == "ok" and not r.is_repeat]
    if not ok:
        return []
    pts = np.array([[r.metrics["accuracy"], r.metrics["latency_ms"]] for r in ok])
    return [{"arch_key": ok[i].arch_key, "describe": ok[i].describe, "config": ok[i].config,
             "score": float(pts[i, 0]), "latency_ms": float(pts[i, 1])}
            for i in non_dominated(pts, ["maximize", "minimize"])]


def _student(member: dict[str, Any]) -> Any:
    from dime_nas.student import StudentConfig

    return StudentConfig.from_dict(member["config"])


def _hv(points: np.ndarray, budget: float) -> float:
    from dime_nas.search.pareto import hypervolume

    return hypervolume(points, ["maximize", "minimize"], [0.0, budget]) if len(points) else 0.0


def _markdown(d: dict[str, Any]) -> str:
    lines = ["# Supernet search against short-distill search at equal time", "",
             f"Fronts distilled stand-alone for {d['steps']} steps; hypervolume on their test accuracy and "
             f"measured latency, reference (accuracy 0, latency {d['reference'][1]} ms).", "",
             "| search | students scored | CPU time (s) | front size | hypervolume (true) | hypervolume (its own scores) |",
             "|---|---|---|---|---|---|"]
    for name, s in d["searches"].items():
        extra = f" (+ {s['supernet_train_cpu_s']:.0f} s supernet training)" if "supernet_train_cpu_s" in s else ""
        lines.append(f"| {name} | {s['distinct']} | {s['cpu_s']:.0f}{extra} | {len(s['front'])} | "
                     f"{s['hv_true']:.4f} | {s['hv_proxy']:.4f} |")
    for name, s in d["searches"].items():
        lines += ["", f"**{name}** front:", "", "| student | latency (ms) | score | true accuracy |", "|---|---|---|---|"]
        for m in sorted(s["front"], key=lambda m: m["latency_ms"]):
            lines.append(f"| {m['describe']} | {m['latency_ms']:.3f} | {m['score']:.3f} | {m['true_accuracy']:.3f} |")
    lines += ["", f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores, load average "
                  f"{', '.join(f'{x:.1f}' for x in d['machine']['load_avg'])} at the end."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
