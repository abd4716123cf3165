"""Hand-off: full distillation of the students a search selected, then re-measurement.

``select`` picks trials from a finished study: ``knee``, ``best``, ``budget`` (the best
student under each budget), ``top:K`` (K spread along the front) or ``trial:N``.
Each full run checkpoints under ``RunDir.full_run(<arch_key>)`` and resumes from there;
results are appended to the run's ``distill_results.json`` (proxy vs full side by side).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import optuna

from .config import SHORT_RUN_ONLY
from .errors import ConfigError
from .metrics import METRICS, cost_metrics
from .run_dir import RunDir
from .search.record import TrialRecord, trial_status
from .search.report import SelectionReason as Why
from .search.study import load_run_study
from .student import StudentConfig


def choose_trials(run: RunDir | Path, select: str, study: optuna.Study | None = None) -> list[dict[str, Any]]:
    """The selected.json entries (or a study trial) matching ``select``.

    ``knee`` (or the best student when the front has no knee), ``best``, ``budget`` (the
    best student under each budget, best overall first), ``top:K`` (the first K of the
    top-K spread, in front order) or ``trial:N`` (any feasible finished trial, read from
    ``study``: by default the run's recorded one).
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    kind, n = _parse_selection(select)
    if kind == "trial":
        return [_trial_pick(study or load_run_study(run), n)]
    if not run.selected_json.is_file():
        raise ConfigError(f"{run.path} has no selected.json: run `dime-nas report {run.path}` first")
    picks = json.loads(run.selected_json.read_text())["selected"]

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
        raise ConfigError(f"no feasible student to select in {run.path}", key="--select")
    return out


def _parse_selection(select: str) -> tuple[str, int | None]:
    kind, _, number = select.partition(":")
    if kind in ("knee", "best", "budget") and not number:
        return kind, None
    if kind in ("top", "trial") and number.isdigit() and (kind == "trial" or int(number) > 0):
        return kind, int(number)
    raise ConfigError(f"unknown selection {select!r}: use knee, best, budget, top:K or trial:N", key="--select")


def _trial_pick(study: optuna.Study, number: int) -> dict[str, Any]:
    """A pick (as in selected.json) for trial ``number``, which must be feasible and finished."""
    trials = study.get_trials(deepcopy=False)
    trial = trials[number] if number < len(trials) else None
    if trial is None or trial.state != optuna.trial.TrialState.COMPLETE or trial_status(trial) != "ok":
        raise ConfigError(f"trial {number} is not a feasible finished trial of this run", key="--select")
    record = TrialRecord.from_trial(trial)
    return {"trial": number, "arch_key": record.arch_key, "config": record.config, "describe": record.describe,
            "metrics": {m: float(record.metrics[m]) for m in METRICS if record.metrics.get(m) is not None},
            "why": [f"trial {number} by hand"]}


def distill_selected(run: RunDir, select: str, *, steps: int | None = None, progress: bool = True,
                     export: bool = True) -> list[dict[str, Any]]:
    """Full runs of the selected students; appends their results to the run's and returns them all."""
    import dataclasses

    from .distill.trainer import distill
    from .evaluate import evaluate_student, evaluate_towers
    from .pipeline import prepare_cache, teacher_spec
    from .cost.meter import CostMeter
    from .teacher import load_teacher

    config = run.load_config()
    picks = choose_trials(run, select)
    teacher = load_teacher(teacher_spec(config.teacher, progress), device=config.teacher.device)
    cache, text_cfg = prepare_cache(config, progress=progress, teacher=teacher)
    settings = config.full_distill if steps is None else dataclasses.replace(config.full_distill, steps=steps)
    meter = CostMeter.for_experiment(config, text_cfg)
    supernet = _supernet(config, cache, progress) if settings.init == "supernet" else None
    results = json.loads(run.distill_results.read_text()) if run.distill_results.exists() else []
    for pick in picks:
        student = StudentConfig.from_dict(pick["config"])
        work = run.full_run(student.arch_key)
        initial = _inherited(supernet, student) if supernet is not None else None
        towers, result = distill(student, cache, settings, checkpoint_dir=work, resume=True, progress=progress,
                                 evaluate=functools.partial(evaluate_towers, cache=cache), initial=initial)
        if not result.is_main:  # under torchrun, rank 0 alone measures, evaluates and writes
            continue
        cost = meter.measure(student)
        full = {**result.metrics, **{m: cost[m] for m in cost_metrics()}}
        # the held-out test split: seen by no trial and no selection, so free of selection bias
        test = evaluate_student(towers.visual, cache, student.vision.image_size, towers.text,
                                student.text.context_length if towers.text is not None else None, split="test")
        entry = {"trial": pick["trial"], "arch_key": student.arch_key, "describe": student.describe(),
                 "steps": result.steps, "seconds": result.seconds, "device": result.device,
                 "processes": result.processes, "proxy": pick["metrics"],
                 "full": full, "test": {k: v for k, v in test.items() if not k.startswith("teacher/")},
                 "checkpoint": str(work / "checkpoint.pt")}
        if export:
            from .deliverable import export_student

            out = run.export_dir(student.arch_key)
            recipe = {k: v for k, v in dataclasses.asdict(settings).items() if k not in SHORT_RUN_ONLY}
            card = export_student(student, towers, out, preprocess_cfg=cache.manifest["preprocess"],
                                  teacher=teacher, card={"metrics": full, "data": cache.summary(), "distill": recipe})
            entry["export"] = str(out)
            entry["model_card"] = card["name"]
        results = [r for r in results if r["arch_key"] != student.arch_key] + [entry]
        run.distill_results.write_text(json.dumps(results, indent=1) + "\n")
    return results


def _supernet(config: Any, cache: Any, progress: bool) -> Any:
    """The study's supernet (``full_distill.init: supernet``), from the store or trained now."""
    from .space import SearchSpace
    from .supernet.store import load_or_train

    return load_or_train(config, SearchSpace.load(config.space), cache, progress=progress)


def _inherited(supernet: Any, student: StudentConfig) -> dict[str, Any]:
    """The weights ``supernet`` holds for ``student``: where its full run starts."""
    from .supernet.extract import extract

    return extract(supernet, student).state_dict()
