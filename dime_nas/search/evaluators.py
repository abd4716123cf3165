"""How a search scores a student it has costed: the :class:`TrialEvaluator` seam.

The objective (``search/objective.py``) owns a trial's flow: claim the architecture, reuse
an earlier result, measure the cost, reject a student over a cost budget, record. Between
the cost and the record, an evaluator turns the student into quality metrics:

- ``short_distill``: a short DIME-FM run from scratch per seed, scored on the validation split;
- ``supernet``: the student's weights inherited from a trained weight-sharing supernet.

A study uses one evaluator (``search.evaluator``); adding one is a class and a line in
:data:`EVALUATORS`.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, did_you_mean

if TYPE_CHECKING:  # optuna loads when a trial runs: config reads EVALUATORS' names without it
    import optuna

    from ..student import StudentConfig
    from .objective import TrialContext


@dataclass
class Evaluation:
    """What an evaluator measured of one student."""

    metrics: dict[str, Any]  # quality metrics on the validation split (accuracy, per task, ...)
    train_steps: int  # optimiser steps it took (0: none)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, e.g. train_s, eval_s
    record: dict[str, Any] = field(default_factory=dict)  # further TrialRecord fields (train_device, loss_curve)


class TrialEvaluator(abc.ABC):
    """Scores students of one study.

    Call order: :meth:`prepare` once per process before its first trial, then
    :meth:`evaluate` for each student that passed its cost budgets. ``evaluate`` never runs
    the teacher (the objective checks), reads only the validation split, and may raise
    ``optuna.TrialPruned`` to stop a student early.
    """

    name: str = ""

    def prepare(self, ctx: TrialContext, *, build: bool = True) -> None:
        """Build or load what every trial shares (nothing by default).

        ``build`` False (a worker joining a shared study): load only, refuse what is missing.
        """

    @abc.abstractmethod
    def evaluate(self, trial: optuna.Trial, ctx: TrialContext, config: StudentConfig) -> Evaluation:
        """The student's quality metrics."""


class ShortDistill(TrialEvaluator):
    """A short DIME-FM run from scratch (``distill`` settings), per seed; scored by the mean over seeds.

    In a single-objective study the first seed's intermediate evaluations feed the pruner.
    """

    name = "short_distill"

    def evaluate(self, trial: optuna.Trial, ctx: TrialContext, config: StudentConfig) -> Evaluation:
        from ..distill.trainer import average_last_evals, distill
        from ..evaluate import evaluate_towers

        settings = ctx.experiment.distill.for_student(config)
        evaluate = functools.partial(evaluate_towers, cache=ctx.cache)
        gate = ctx.meter.timing_gate
        timings = {"train_s": 0.0, "eval_s": 0.0}
        steps, per_seed = 0, []
        for k in range(settings.seeds):  # seeds > 1: the mean of several short runs, for a steadier score
            t0 = time.time()
            model, result = distill(config, ctx.cache, dataclasses.replace(settings, seed=settings.seed + k),
                                    progress=ctx.progress, on_eval=_pruner(trial, ctx, settings) if k == 0 else None,
                                    evaluate=evaluate, final_eval=False,
                                    before_step=gate.step if gate is not None else None)
            steps += result.steps
            timings["train_s"] += time.time() - t0
            t0 = time.time()
            per_seed.append(average_last_evals(result.evals, evaluate(model), settings.average_last_evals))
            timings["eval_s"] += time.time() - t0
        return Evaluation(mean_over_seeds(per_seed), steps, timings, _training_record(result))


def _training_record(result: Any) -> dict[str, Any]:
    """What a trial records of its training run (a DistillResult): why it stopped, where, the loss curve."""
    return {"train_stopped_by": result.stopped_by, "train_device": result.device,
            "loss_curve": [{"step": c["step"], "total": c["total"]} for c in result.curve]}


def _pruner(trial: optuna.Trial, ctx: TrialContext, settings: Any) -> Any:
    """The on_eval callback that reports to Optuna's pruner (None where pruning is off)."""
    from . import record

    if ctx.multi_objective or not ctx.experiment.search.prune:
        return None
    metric = ctx.objectives[0].metric

    def on_eval(step: int, m: dict[str, Any]) -> None:
        value = m.get(metric)
        if value is not None:
            # the pruner compares the k-th evaluations of trials: a longer short run (its own text
            # tower) reports its k-th at the step where a plain one has it
            trial.report(value, step // settings.eval_every * ctx.experiment.distill.eval_every)
            if trial.should_prune():
                record.write(trial, status="pruned", reason=f"pruned at step {step}: {metric} = {value:.4g}")
                import optuna

                raise optuna.TrialPruned()

    return on_eval


def mean_over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' metrics, each number averaged over them; with several runs, also
    ``seed_std/<metric>`` (the spread between seeds) for each headline number (not per task)."""
    import statistics

    from ..distill.trainer import mean_of_readings

    if len(per_seed) == 1:
        return dict(per_seed[0])
    out = mean_of_readings(per_seed[:-1], per_seed[-1])
    for key, value in per_seed[-1].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "/" not in key:
            out[f"seed_std/{key}"] = statistics.stdev(float(m[key]) for m in per_seed)
    return out


class SupernetSubnet(TrialEvaluator):
    """The student's weights inherited from the study's trained supernet (``supernet/``), after
    ``supernet.finetune_steps`` DIME-FM steps from them (10 by default), scored on the validation split.

    The supernet is trained once, before the first trial, and kept in the user cache (``supernet/store.py``).
    """

    name = "supernet"

    def __init__(self) -> None:
        self.supernet: Any = None

    def prepare(self, ctx: TrialContext, *, build: bool = True) -> None:
        from ..supernet.store import load_or_train

        self.supernet = load_or_train(ctx.experiment, ctx.space, ctx.cache, build=build, progress=ctx.progress)

    def evaluate(self, trial: optuna.Trial, ctx: TrialContext, config: StudentConfig) -> Evaluation:
        if self.supernet is None:
            raise RuntimeError("SupernetSubnet.evaluate before prepare: the supernet is not loaded")
        gate = ctx.meter.timing_gate
        return score_subnet(self.supernet, config, ctx.cache, finetune_settings(ctx.experiment),
                            progress=ctx.progress, before_step=gate.step if gate is not None else None)


def score_subnet(supernet: Any, config: StudentConfig, cache: Any, finetune: Any, *, progress: bool = False,
                 before_step: Any = None) -> Evaluation:
    """A student's validation metrics with the supernet's weights: read through the supernet itself
    (no copy), or, with ``finetune.steps``, extracted and fine-tuned that many steps first."""
    from ..distill.trainer import distill
    from ..evaluate import evaluate_towers
    from ..supernet.elastic import SubnetTowers
    from ..supernet.extract import extract

    timings, steps, record = {}, 0, {}
    if finetune.steps:
        t0 = time.time()
        inherited = extract(supernet, config).state_dict()
        timings["extract_s"] = time.time() - t0
        t0 = time.time()
        towers, result = distill(config, cache, finetune, initial=inherited, final_eval=False, progress=progress,
                                 before_step=before_step)
        timings["train_s"] = time.time() - t0
        steps = result.steps
        record = _training_record(result)
    else:
        towers = SubnetTowers(supernet, config)
    t0 = time.time()
    metrics = evaluate_towers(towers, cache)
    timings["eval_s"] = time.time() - t0
    return Evaluation(metrics, steps, timings, record)


def finetune_settings(config: Any) -> Any:
    """The short DIME-FM run a supernet search gives each extracted student: ``supernet.finetune_steps``
    at ``supernet.finetune_lr`` (cosine to 0, no warm-up), with the short run's batches and losses."""
    s = config.supernet
    return dataclasses.replace(config.distill, steps=s.finetune_steps, lr=s.finetune_lr, warmup_steps=0, seconds=None,
                               eval_every=None, average_last_evals=1, seeds=1)


EVALUATORS: dict[str, type[TrialEvaluator]] = {ShortDistill.name: ShortDistill, SupernetSubnet.name: SupernetSubnet}


def make_evaluator(name: str) -> TrialEvaluator:
    """The evaluator called ``name`` (``search.evaluator``)."""
    if name not in EVALUATORS:
        raise ConfigError(f"unknown evaluator {name!r}" + did_you_mean(name, EVALUATORS)
                          + f"; known: {', '.join(EVALUATORS)}", key="search.evaluator")
    return EVALUATORS[name]()
