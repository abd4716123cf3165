"""Does a full distillation start better from the supernet's weights? Steps to the scratch run's accuracy.

For each student of a list, two full runs of the same recipe (the long run of the fidelity
benchmarks: the short run's recipe for ``--steps`` steps, warm-up 10%): one from a random
initialisation, one from the weights the experiment's supernet holds for it
(``full_distill.init: supernet``). Both are evaluated on the test split every ``--every``
steps. Reported: the scratch run's final test accuracy, and the first step at which the
inherited run reaches it (target: at most a third of the steps). Runs are kept in a
resumable store.

    python experiments/benchmarks/supernet_warm_start.py --students experiments/benchmarks/warm_start_students.txt
"""
from __future__ import annotations

import argparse
import json
from functools import partial
from typing import Any

import common

CONFIG = common.ROOT / "experiments" / "shapes-vit-supernet.yaml"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--students", required=True, help="student list (describe() form, one per line)")
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--every", type=int, default=100, help="steps between test-split evaluations")
    p.add_argument("--name", default="supernet_warm_start")
    p.add_argument("--inherited-lr", type=float, default=None,
                   help="peak learning rate of the run from the inherited weights (default: the scratch run's)")
    p.add_argument("--report-only", action="store_true", help="report the students the store has finished; train none")
    args = p.parse_args()

    import torch

    from preregister import read_students
    from dime_nas.supernet.store import load_or_train, supernet_dir

    torch.set_num_threads(1)
    config, cache, _, space = common.load(args.config)
    students = read_students(args.students, cache.embed_dim)
    supernet = load_or_train(config, space, cache, progress=True)
    store = common.ROOT / "runs" / "benchmarks" / f"warm-start-{supernet_dir(config, space).name}.jsonl"
    done = {r["key"]: r for r in common.read_records(store)}
    store.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in students:
        runs = {}
        lr = f"|lr{args.inherited_lr:g}" if args.inherited_lr else ""
        keys = {"scratch": f"{s.arch_key}|scratch|{args.steps}|{args.every}",
                "supernet": f"{s.arch_key}|supernet|{args.steps}|{args.every}{lr}"}
        if args.report_only and not all(k in done for k in keys.values()):
            continue
        for init, key in keys.items():
            if key not in done:
                done[key] = {"key": key, **_run(s, init, supernet, config, cache, args.steps, args.every,
                                                 args.inherited_lr if init == "supernet" else None)}
                with store.open("a") as f:
                    f.write(json.dumps(done[key]) + "\n")
            runs[init] = done[key]
        rows.append(_compare(s, runs))
        print(rows[-1], flush=True)
        # written after each student: a partial run still reports what it finished
        data = {"students": rows, "of": len(students), "steps": args.steps, "every": args.every,
                "inherited_lr": args.inherited_lr,
                "config": common.relative(args.config), "supernet": supernet_dir(config, space).name,
                "machine": common.machine()}
        common.write(args.name, data, _markdown(data))
    return 0


def _run(student: Any, init: str, supernet: Any, config: Any, cache: Any, steps: int, every: int,
         lr: float | None = None) -> dict[str, Any]:
    from dime_nas.distill.trainer import distill
    from dime_nas.evaluate import evaluate_towers
    from dime_nas.supernet.extract import extract

    settings = common.settings(common.long_settings(config, steps, seed=0), eval_every=every)
    if lr:
        settings = common.settings(settings, lr=lr)
    inherited = extract(supernet, student) if init == "supernet" else None
    evaluate = partial(evaluate_towers, cache=cache, split="test")
    start = evaluate(inherited) if inherited is not None else None
    _, result = distill(student, cache, settings, evaluate=evaluate,
                        initial=inherited.state_dict() if inherited is not None else None)
    curve = ([{"step": 0, "accuracy": start["accuracy"]}] if start else []) + \
        [{"step": e["step"], "accuracy": e["accuracy"]} for e in result.evals] + \
        [{"step": result.steps, "accuracy": result.metrics["accuracy"]}]
    return {"init": init, "curve": curve, "train_s": result.seconds}


def _compare(student: Any, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    target = runs["scratch"]["curve"][-1]["accuracy"]
    reached = next((p["step"] for p in runs["supernet"]["curve"] if p["accuracy"] >= target), None)
    steps = runs["scratch"]["curve"][-1]["step"]
    scratch = {p["step"]: p["accuracy"] for p in runs["scratch"]["curve"]}
    ahead = [p["step"] for p in runs["supernet"]["curve"] if p["step"] in scratch and p["accuracy"] > scratch[p["step"]]]
    behind = next((p["step"] for p in runs["supernet"]["curve"]
                   if p["step"] in scratch and p["accuracy"] <= scratch[p["step"]]), None)
    return {"arch_key": student.arch_key, "describe": student.describe(), "scratch_final": target,
            "inherited_start": runs["supernet"]["curve"][0]["accuracy"],
            "inherited_final": runs["supernet"]["curve"][-1]["accuracy"],
            "steps_to_scratch_final": reached, "share_of_steps": reached / steps if reached is not None else None,
            "inherited_ahead_at": ahead, "first_not_ahead": behind,
            "curves": {k: v["curve"] for k, v in runs.items()}}


def _markdown(d: dict[str, Any]) -> str:
    lines = ["# Full distillation from the supernet's weights", "",
             f"Each student distilled for {d['steps']} steps from scratch and from its inherited weights "
             f"(supernet `{d['supernet']}`), test accuracy every {d['every']} steps"
             + (f"; the inherited run at peak learning rate {d['inherited_lr']:g}" if d.get("inherited_lr") else "")
             + ".", "",
             f"Students finished: {len(d['students'])} of {d.get('of', len(d['students']))}.", "",
             "| student | scratch, final | inherited, at step 0 | inherited, final | steps to the scratch final "
             "| inherited no longer ahead at step |", "|---|---|---|---|---|---|"]
    for r in d["students"]:
        share = f"{r['steps_to_scratch_final']} ({r['share_of_steps']:.2f} of the run)" \
            if r["steps_to_scratch_final"] is not None else "not reached"
        lines.append(f"| {r['describe']} | {r['scratch_final']:.3f} | {r['inherited_start']:.3f} | "
                     f"{r['inherited_final']:.3f} | {share} | {r['first_not_ahead'] or 'the end'} |")
    lines += ["", f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
