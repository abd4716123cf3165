"""Hand-off: full distillation of the students a search selected, then re-measurement.

``select`` picks trials from a finished study: ``knee``, ``best``, ``budget`` (the best
student under each budget), ``top:K`` (K spread along the front) or ``trial:N``.
Each full run checkpoints under ``RUN_DIR/full/<arch_key>/`` and resumes from there;
results are appended to ``RUN_DIR/distill_results.json`` (proxy vs full side by side)
and the report is rewritten to show them.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import optuna

from .config import ExperimentConfig
from .errors import ConfigError
from .student import StudentConfig


def choose_trials(run_dir: Path, select: str) -> list[dict[str, Any]]:
    """The selected.json entries (or a study trial) matching ``select``.

    ``knee`` (or the best student when the front has no knee), ``best``, ``budget`` (the
    best student under each budget, best overall first), ``top:K`` (the first K of the
    top-K spread, in front order) or ``trial:N`` (any feasible finished trial).
    """
    from .search.report import SelectionReason as Why

    kind, n = _parse_selection(select)
    path = run_dir / "selected.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no selected.json: run `dime-nas report {run_dir}` first")
    picks = json.loads(path.read_text())["selected"]
    if kind == "trial":
        rows = list(csv_rows(run_dir / "trials.csv"))
        row = next((r for r in rows if int(r["number"]) == n), None)
        if row is None or row["status"] != "ok":
            raise ConfigError(f"trial {n} is not a feasible finished trial of this run", key="--select")
        return [{"trial": n, "arch_key": row["arch_key"], "config": json.loads(row["config_json"]),
                 "describe": row["describe"], "metrics": _row_metrics(row), "why": [f"trial {n} by hand"]}]

    def having(reason: Why) -> list[dict[str, Any]]:
        return [p for p in picks if reason.value in p.get("reasons", [])]

    if kind == "knee":
        out = having(Why.KNEE) or having(Why.BEST)
    elif kind == "best":
        out = having(Why.BEST)
    elif kind == "budget":
        out = having(Why.BEST) + [p for p in having(Why.BUDGET) if Why.BEST.value not in p["reasons"]]
    else:  # top:K
        out = sorted(having(Why.TOP), key=lambda p: p["top_rank"])[:n] or having(Why.BEST)
    if not out:
        raise ConfigError(f"no feasible student to select in {run_dir}", key="--select")
    return out


def _parse_selection(select: str) -> tuple[str, int | None]:
    kind, _, number = select.partition(":")
    if kind in ("knee", "best", "budget") and not number:
        return kind, None
    if kind in ("top", "trial") and number.isdigit() and (kind == "trial" or int(number) > 0):
        return kind, int(number)
    raise ConfigError(f"unknown selection {select!r}: use knee, best, budget, top:K or trial:N", key="--select")


def csv_rows(path: Path):
    import csv

    with open(path, newline="") as fh:
        yield from csv.DictReader(fh)


def _row_metrics(row: dict[str, str]) -> dict[str, float]:
    out = {}
    for k in ("accuracy", "shifted_accuracy", "retrieval", "agreement", "latency_ms", "gmacs", "params_m"):
        if row.get(k):
            out[k] = float(row[k])
    return out


def distill_selected(config: ExperimentConfig, run_dir: Path, select: str, *, steps: int | None = None,
                     progress: bool = True, export: bool = True) -> list[dict[str, Any]]:
    """Full runs of the selected students; returns (and appends) their results."""
    import dataclasses

    from .distill.trainer import distill
    from .evaluate import evaluate_student, evaluate_towers
    from .pipeline import prepare_cache, teacher_spec
    from .cost.targets import get_target
    from .search.objective import TrialContext, measure_cost
    from .space import SearchSpace
    from .teacher import load_teacher

    picks = choose_trials(run_dir, select)
    teacher = load_teacher(teacher_spec(config.teacher, progress), device=config.teacher.device)
    cache, text_cfg = prepare_cache(config, progress=progress, teacher=teacher)
    settings = config.full_distill if steps is None else dataclasses.replace(config.full_distill, steps=steps)
    target = get_target(config.target, config.targets_file)
    ctx = TrialContext(config, SearchSpace.load(config.space), cache, target, text_cfg)
    results_path = run_dir / "distill_results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    for pick in picks:
        student = StudentConfig.from_dict(pick["config"])
        work = run_dir / "full" / student.arch_key
        towers, run = distill(student, cache, settings, checkpoint_dir=work, resume=True, progress=progress,
                              evaluate=functools.partial(evaluate_towers, cache=cache))
        if not run.is_main:  # under torchrun, rank 0 alone measures, evaluates and writes
            continue
        cost = measure_cost(student, ctx)
        full = {**run.metrics, "latency_ms": cost["latency_ms"], "gmacs": cost["gmacs"], "params_m": cost["params_m"]}
        # the held-out test split: seen by no trial and no selection, so free of selection bias
        test = evaluate_student(towers.visual, cache, student.vision.image_size, towers.text,
                                student.text.context_length if towers.text is not None else None, split="test")
        entry = {"trial": pick["trial"], "arch_key": student.arch_key, "describe": student.describe(),
                 "steps": run.steps, "seconds": run.seconds, "device": run.device,
                 "processes": run.processes, "proxy": pick["metrics"],
                 "full": full, "test": {k: v for k, v in test.items() if not k.startswith("teacher/")},
                 "checkpoint": str(work / "checkpoint.pt")}
        if export:
            from .deliverable import export_student

            card = export_student(student, towers, work / "export", preprocess_cfg=cache.manifest["preprocess"],
                                  teacher=teacher, card={"metrics": full, "data": cache.summary(),
                                                         "distill": dataclasses.asdict(settings)})
            entry["export"] = str(work / "export")
            entry["model_card"] = card["name"]
        results = [r for r in results if r["arch_key"] != student.arch_key] + [entry]
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    return results


def rewrite_report(run_dir: Path, storage: str) -> None:
    from .search.report import write_report
    from .search.study import open_storage

    summaries = optuna.study.get_all_study_summaries(open_storage(storage))
    if len(summaries) != 1:
        raise ConfigError(f"expected one study in {storage}, found {len(summaries)}")
    study = optuna.load_study(study_name=summaries[0].study_name, storage=open_storage(storage))
    write_report(study, run_dir)
