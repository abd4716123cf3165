"""The latency measurements a run's studies hold, as latency-predictor samples (for
``dime-nas predictor fit RUN_DIR``): the measured towers of every trial of the target,
predictions and reused results left out."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cost.predictor import samples_from_cost
from ..run_dir import RunDir
from .record import TrialRecord


def run_measurements(run_dir: str | Path, target: str) -> list[dict[str, Any]]:
    """Measured towers of ``target`` in every study of a run folder's storage."""
    import optuna

    run = RunDir(run_dir)
    if not run.is_run:
        raise FileNotFoundError(f"{run_dir} is neither a measurements file nor a run directory")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    samples = []
    for name in optuna.study.get_all_study_names(run.storage):
        study = optuna.load_study(study_name=name, storage=run.storage)
        info = study.user_attrs.get("target") or {}
        if info.get("name") != target:
            continue
        for t in study.get_trials(deepcopy=False):
            r = TrialRecord.from_trial(t)
            if r.cost and r.cost.get("latency_source", "measured") == "measured" and r.reused_from is None:
                samples += samples_from_cost(r.config or {}, r.cost, info)
    return samples
