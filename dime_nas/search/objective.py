"""One search trial: sample -> cost (before any training) -> budgets -> the study's evaluator
(a short DIME-FM run, or a supernet's inherited weights) -> the latency timed once more, with
everything stored on the Optuna trial as its TrialRecord (search/record.py): the reporter
reads only that. Cost is measured by the CostMeter (cost/meter.py), quality by a
TrialEvaluator (search/evaluators.py).
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from ..config import ExperimentConfig, Objective
from ..cost.meter import CostMeter, TimedTowers
from ..metrics import METRICS, Budget, cost_metrics
from ..space import SearchSpace
from ..student import StudentConfig
from ..teacher import teacher_forward_count
from . import record
from .evaluators import TrialEvaluator, make_evaluator
from .record import TrialRecord


@dataclass
class TrialContext:
    """What every trial of a study shares (opened once per search)."""

    experiment: ExperimentConfig
    space: SearchSpace
    cache: Any  # FeatureCache
    meter: CostMeter  # the target, budgets and latency rules
    evaluator: TrialEvaluator  # scores a student that passed its cost budgets
    objectives: list[Objective] = field(default_factory=list)
    progress: bool = True
    train_steps_run: int = 0  # over all trials of this process (tests check infeasible trials add none)
    fail_stale: Any = None  # fails the trials of dead workers (set by the study loop)

    @classmethod
    def for_experiment(cls, config: ExperimentConfig, cache: Any, teacher_text_cfg: dict[str, Any] | None, *,
                       progress: bool = True) -> TrialContext:
        """The context of an experiment's search, over its feature cache."""
        return cls(config, SearchSpace.load(config.space), cache, CostMeter.for_experiment(config, teacher_text_cfg),
                   make_evaluator(config.search.evaluator), objectives=config.objectives, progress=progress)

    @property
    def budgets(self) -> list[Budget]:
        return self.meter.budgets

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


def claim_architecture(trial: optuna.Trial, ctx: TrialContext) -> StudentConfig:
    """Suggest the trial's student and record its architecture, for other workers to see.

    Workers call this under the study's claim lock: a trial that looks for an earlier one
    of the same architecture (:func:`_find_previous`) then always finds its record.
    """
    config = ctx.space.suggest(trial, embed_dim=ctx.cache.embed_dim)
    record.write(trial, arch_key=config.arch_key, config=config.to_dict(), describe=config.describe())
    return config


def run_trial(trial: optuna.Trial, ctx: TrialContext, config: StudentConfig) -> float | tuple[float, ...]:
    """The Optuna objective, for the architecture ``config`` that :func:`claim_architecture` claimed
    for ``trial``. Raises TrialPruned, or any error (the study records it)."""
    previous = _find_previous(trial, config.arch_key, fail_stale=ctx.fail_stale)
    if previous is not None:
        return _reuse(trial, previous)
    with tempfile.TemporaryDirectory(prefix="dime_nas_trial_") as workdir:
        return _evaluate(trial, ctx, config, TimedTowers(workdir))


def _evaluate(trial: optuna.Trial, ctx: TrialContext, config: StudentConfig, kept: TimedTowers
              ) -> float | tuple[float, ...]:
    """Cost, budgets, evaluation and scores of a claimed architecture not evaluated before."""
    forwards0 = teacher_forward_count()
    t0 = time.time()
    cost = ctx.meter.measure(config, kept)
    timings: dict[str, float] = {"cost_s": time.time() - t0}
    record.write(trial, cost=cost, timings=timings)
    metrics: dict[str, Any] = {m: cost[m] for m in cost_metrics()}
    checked = ctx.meter.violations(cost)
    for b, violation in checked:
        trial.set_constraint(str(b), violation)
    violated = [b for b, violation in checked if violation > 0]
    if violated:
        reason = "; ".join(f"{b.metric} = {cost[b.metric]:.4g} violates {b}" for b in violated)
        if cost.get("latency_source") == "predicted":
            reason += f" ({cost['latency_prediction']}; not measured)"
        record.write(trial, status="infeasible", reason=reason, metrics=metrics, train_steps=0)
        return _values(ctx, metrics)

    done = ctx.evaluator.evaluate(trial, ctx, config)
    ctx.train_steps_run += done.train_steps
    metrics.update(done.metrics)
    timings.update(done.timings)
    t0 = time.time()
    cost = ctx.meter.time_again(cost, kept)
    timings["cost_s"] += time.time() - t0  # the cost step's time includes its second reading
    metrics["latency_ms"] = cost["latency_ms"]
    forwards = teacher_forward_count() - forwards0
    record.write(trial, cost=cost, timings=timings, train_steps=done.train_steps, teacher_forwards=forwards,
                 **done.record)
    if forwards:  # the cache makes the teacher unnecessary in a trial: a forward pass here is a bug
        raise RuntimeError(f"the teacher ran {forwards} forward pass(es) inside trial {trial.number}")
    quality = [b for b in ctx.budgets if METRICS[b.metric].kind == "quality"]
    for b in quality:
        trial.set_constraint(str(b), b.violation(metrics.get(b.metric, math.nan)))
    bad = [b for b in quality if b.violation(metrics.get(b.metric, math.nan)) > 0]
    record.write(trial, metrics=_jsonable(metrics), status="infeasible" if bad else "ok",
                 reason="; ".join(f"{b.metric} = {metrics[b.metric]:.4g} violates {b}" for b in bad))
    return _values(ctx, metrics)


def _values(ctx: TrialContext, metrics: dict[str, Any]) -> float | tuple[float, ...]:
    """Objective values; a quality metric not measured (infeasible before training) is its worst value."""
    values = []
    for o in ctx.objectives:
        v = metrics.get(o.metric)
        values.append(float(METRICS[o.metric].worst if v is None else v))
    return values[0] if len(values) == 1 else tuple(values)


def _find_previous(trial: optuna.Trial, key: str, poll_s: float = 1.0,
                   fail_stale: Callable[[optuna.Study], None] | None = None) -> optuna.trial.FrozenTrial | None:
    """A finished trial of the same architecture to reuse, else None.

    When an earlier trial of it is still running (another worker), wait for it rather
    than train the same student twice; the earlier one never waits for a later one.
    While waiting, ``fail_stale`` fails the trials of dead workers, or a trial whose
    worker was killed would be waited for for ever.
    """
    while True:
        trials = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                                optuna.trial.TrialState.RUNNING))
        same = [t for t in trials if TrialRecord.from_trial(t).arch_key == key and t.number != trial.number]
        done = [t for t in same if t.state == optuna.trial.TrialState.COMPLETE]
        if done:
            return done[0]
        if not [t for t in same if t.number < trial.number]:
            return None
        if fail_stale is not None:  # before waiting (the loop already did it before this trial began)
            fail_stale(trial.study)
        time.sleep(poll_s)


def _reuse(trial: optuna.Trial, previous: optuna.trial.FrozenTrial) -> float | tuple[float, ...]:
    """A configuration already evaluated in this study: copy its result, train nothing."""
    first = TrialRecord.from_trial(previous)
    # worker and retry_of describe this trial, not the result it copies: they stay as written; the
    # status is copied (run_trial records one on every trial that completes)
    reused = dataclasses.replace(first, train_steps=0, worker=None, retry_of=None,
                                 reused_from=first.reused_from if first.is_repeat else previous.number)
    record.write(trial, **reused.to_attrs())
    for k, v in previous.constraints.items():
        trial.set_constraint(k, v)
    return previous.values[0] if len(previous.values) == 1 else tuple(previous.values)


def record_failure(trial: optuna.Trial, exc: BaseException) -> None:
    """Store why a trial failed (the study then marks it FAIL and goes on)."""
    record.write(trial, status="failed", reason=f"{type(exc).__name__}: {exc}"[:2000],
                 traceback=traceback.format_exc()[-4000:])


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in d.items()}
