"""One search trial: sample -> cost (before any training) -> budgets -> short DIME-FM run
-> evaluation -> the latency timed once more, with everything stored on the Optuna trial
as its TrialRecord (search/record.py): the reporter reads only that.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from ..config import METRICS, Budget, ExperimentConfig, Objective
from ..cost.targets import Target
from ..space import SearchSpace
from ..student import StudentConfig
from ..teacher import teacher_forward_count
from . import record
from .record import TrialRecord

COST_METRICS = ("latency_ms", "gmacs", "params_m")


@dataclass
class TrialContext:
    """What every trial of a study shares (opened once per search)."""

    experiment: ExperimentConfig
    space: SearchSpace
    cache: Any  # FeatureCache
    target: Target
    teacher_text_cfg: dict[str, Any] | None  # for students that reuse the teacher's text tower
    objectives: list[Objective] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)
    progress: bool = True
    train_steps_run: int = 0  # over all trials of this process (tests check infeasible trials add none)
    timing_gate: Any = None  # TimingGate when local workers share this machine: none trains while one times
    fail_stale: Any = None  # fails the trials of dead workers (set by the study loop)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


@dataclass
class TimedTowers:
    """The towers a trial timed and their exports, kept in ``workdir`` to be timed again."""

    workdir: str
    towers: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, Any] = field(default_factory=dict)


def measure_cost(config: StudentConfig, ctx: TrialContext, keep: TimedTowers | None = None) -> dict[str, Any]:
    """Params, MACs and target latency of the towers the target counts.

    ``keep``: the exports go to its folder (which outlives this call) and it receives the
    timed towers, for :func:`time_again`; None: a temporary folder, nothing kept.
    """
    from ..cost.flops import tower_cost
    from ..cost.latency import measure_target
    from ..cost.towers import towers_from_student
    from .latency_gate import gate_for

    towers = towers_from_student(config, ctx.teacher_text_cfg)
    counted = [t for t in ctx.target.towers if t in towers]
    if len(counted) != len(ctx.target.towers):
        missing = sorted(set(ctx.target.towers) - set(towers))
        raise ValueError(f"target {ctx.target.name} counts tower(s) {missing} this student does not have")
    per_tower = {name: tower_cost(towers[name]) for name in counted}
    out: dict[str, Any] = {
        "towers": counted,
        "params_m": sum(c["params"] for c in per_tower.values()) / 1e6,
        "gmacs": sum(c["gmacs"] for c in per_tower.values()),
        "gflops": sum(c["gflops"] for c in per_tower.values()),
        "per_tower": {n: {"params": c["params"], "gmacs": c["gmacs"], "gflops": c["gflops"]}
                      for n, c in per_tower.items()},
    }
    out["target"] = ctx.target.name
    gate = gate_for(ctx)
    decided = gate.decide(config.to_dict(), out) if gate else None
    if decided:  # clearly far from the budget: no export, no measurement
        return {**out, **decided}
    timed = {n: towers[n] for n in counted}
    exports: dict[str, Any] = keep.exports if keep is not None else {}
    workdir = (contextlib.nullcontext(keep.workdir) if keep is not None
               else tempfile.TemporaryDirectory(prefix="dime_nas_trial_"))
    with _timing(ctx), workdir as tmp:
        lat = measure_target(timed, ctx.target, tmp, exports)
        out["latency_ms"], out["latency_source"] = lat["total_median_ms"], "measured"
        out["latency_p10_ms"], out["latency_p90_ms"] = lat["total_p10_ms"], lat["total_p90_ms"]
        decision = _decide_latency(ctx, lat["total_median_ms"],
                                   lambda: measure_target(timed, ctx.target, tmp, exports)["total_median_ms"], tmp)
    if decision is not None:
        out["latency_decision"] = decision.to_dict()
        if decision.near:  # decided on the pooled median; its spread is over rounds
            out["latency_ms"] = decision.pooled_ms
            out["latency_p10_ms"], out["latency_p90_ms"] = decision.spread_ms
    for name, r in lat["towers"].items():
        out["per_tower"][name].update(_tower_latency(r["latency"]))
    if gate:
        gate.observe(config.to_dict(), out)
    if keep is not None:
        keep.towers = timed
    return out


def time_again(cost: dict[str, Any], ctx: TrialContext, kept: TimedTowers) -> dict[str, Any]:
    """The cost with its latency timed once more (after training); the lower reading is kept.

    On a shared machine, another process or virtual machine now and then slows every
    reading for a second or more, and only ever slows it: of two readings taken a training
    run apart, the lower is the nearer to what the student costs. Both are recorded. A
    latency decided on a near-budget pooled median, or predicted, is left as it is.
    """
    from ..cost.latency import measure_target

    if cost.get("latency_source") != "measured" or cost.get("latency_decision", {}).get("near") or not kept.towers:
        return cost
    with _timing(ctx):
        again = measure_target(kept.towers, ctx.target, kept.workdir, kept.exports)
    out = {**cost, "latency_readings_ms": [cost["latency_ms"], again["total_median_ms"]]}
    if again["total_median_ms"] < cost["latency_ms"]:
        out.update(latency_ms=again["total_median_ms"], latency_p10_ms=again["total_p10_ms"],
                   latency_p90_ms=again["total_p90_ms"])
        out["per_tower"] = {name: {**c, **_tower_latency(again["towers"][name]["latency"])} if name in again["towers"]
                            else c for name, c in cost["per_tower"].items()}
    return out


def _tower_latency(m: dict[str, Any]) -> dict[str, Any]:
    """The per-tower latency fields a trial records from one measurement."""
    return {"latency_median_ms": m["median_ms"], "latency_p90_ms": m["p90_ms"], "latency_cv": m["cv"],
            "providers": m["providers"], "device": m["machine"]}


def _timing(ctx: TrialContext) -> Any:
    """Held while timing: local workers of this machine do not train meanwhile."""
    return ctx.timing_gate.timing() if ctx.timing_gate is not None else contextlib.nullcontext()


def _decide_latency(ctx: TrialContext, first_ms: float, remeasure: Any, workdir: str) -> Any:
    """The LatencyDecision for the latency budget closest to ``first_ms`` (None without one)."""
    from ..cost.budget_check import decide_latency_budget, reference_timer

    budgets = [b for b in ctx.budgets if b.metric == "latency_ms"]
    if not budgets:
        return None
    budget = min(budgets, key=lambda b: abs(first_ms - b.value) / max(abs(b.value), 1e-12))
    s = ctx.experiment.search
    return decide_latency_budget(budget, first_ms, remeasure, reference_timer(ctx.target, f"{workdir}/reference"),
                                 margin=s.near_budget_margin, rounds=s.near_budget_rounds)


def claim_architecture(trial: optuna.Trial, ctx: TrialContext) -> StudentConfig:
    """Suggest the trial's student and record its architecture, for other workers to see.

    Workers call this under the study's claim lock: a trial that looks for an earlier one
    of the same architecture (:func:`_find_previous`) then always finds its record.
    """
    config = ctx.space.suggest(trial, embed_dim=ctx.cache.embed_dim)
    record.write(trial, arch_key=config.arch_key, config=config.to_dict(), describe=config.describe())
    return config


def run_trial(trial: optuna.Trial, ctx: TrialContext, config: StudentConfig | None = None
              ) -> float | tuple[float, ...]:
    """The Optuna objective. Raises TrialPruned, or any error (the study records it).

    ``config``: the architecture already claimed by :func:`claim_architecture`, else claimed here.
    """
    if config is None:
        config = claim_architecture(trial, ctx)
    previous = _find_previous(trial, config.arch_key, fail_stale=ctx.fail_stale)
    if previous is not None:
        return _reuse(trial, previous)
    with tempfile.TemporaryDirectory(prefix="dime_nas_trial_") as workdir:
        return _evaluate(trial, ctx, config, TimedTowers(workdir))


def _evaluate(trial: optuna.Trial, ctx: TrialContext, config: StudentConfig, kept: TimedTowers
              ) -> float | tuple[float, ...]:
    """Cost, budgets, training and scores of a claimed architecture not evaluated before."""
    from ..distill.trainer import average_last_evals, distill
    from ..evaluate import evaluate_towers

    timings: dict[str, float] = {}
    forwards0 = teacher_forward_count()
    t0 = time.time()
    cost = measure_cost(config, ctx, kept)
    timings["cost_s"] = time.time() - t0
    record.write(trial, cost=cost, timings=timings)
    metrics: dict[str, Any] = {m: cost[m] for m in COST_METRICS}
    cost_budgets = [b for b in ctx.budgets if b.metric in COST_METRICS]
    violated = [b for b in cost_budgets if b.violation(cost[b.metric]) > 0]
    for b in cost_budgets:
        trial.set_constraint(str(b), b.violation(cost[b.metric]))
    if violated:
        reason = "; ".join(f"{b.metric} = {cost[b.metric]:.4g} violates {b}" for b in violated)
        if cost.get("latency_source") == "predicted":
            reason += f" ({cost['latency_prediction']}; not measured)"
        record.write(trial, status="infeasible", reason=reason, metrics=metrics, train_steps=0)
        return _values(ctx, metrics)

    settings = ctx.experiment.distill.for_student(config)

    def on_eval(step: int, m: dict[str, Any]) -> None:
        if ctx.multi_objective or not ctx.experiment.search.prune:
            return
        value = m.get(ctx.objectives[0].metric)
        if value is not None:
            # the pruner compares the k-th evaluations of trials: a longer short run (its own text
            # tower) reports its k-th at the step where a plain one has it
            trial.report(value, step // settings.eval_every * ctx.experiment.distill.eval_every)
            if trial.should_prune():
                record.write(trial, status="pruned",
                             reason=f"pruned at step {step}: {ctx.objectives[0].metric} = {value:.4g}")
                raise optuna.TrialPruned()

    evaluate = functools.partial(evaluate_towers, cache=ctx.cache)
    timings["train_s"] = timings["eval_s"] = 0.0
    steps, per_seed = 0, []
    for k in range(settings.seeds):  # seeds > 1: the mean of several short runs, for a steadier score
        t0 = time.time()
        model, result = distill(config, ctx.cache, dataclasses.replace(settings, seed=settings.seed + k),
                                progress=ctx.progress, on_eval=on_eval if k == 0 else None, evaluate=evaluate,
                                final_eval=False,
                                before_step=ctx.timing_gate.step if ctx.timing_gate is not None else None)
        ctx.train_steps_run += result.steps
        steps += result.steps
        timings["train_s"] += time.time() - t0
        t0 = time.time()
        per_seed.append(average_last_evals(result.evals, evaluate(model), settings.average_last_evals))
        timings["eval_s"] += time.time() - t0
    metrics.update(mean_over_seeds(per_seed))
    t0 = time.time()
    cost = time_again(cost, ctx, kept)
    timings["cost_s"] += time.time() - t0  # the cost step's time includes its second reading
    metrics["latency_ms"] = cost["latency_ms"]
    forwards = teacher_forward_count() - forwards0
    record.write(trial, cost=cost, timings=timings, train_steps=steps, train_stopped_by=result.stopped_by,
                 train_device=result.device, teacher_forwards=forwards,
                 loss_curve=[{"step": c["step"], "total": c["total"]} for c in result.curve])
    if forwards:  # the cache makes the teacher unnecessary in a trial: a forward pass here is a bug
        raise RuntimeError(f"the teacher ran {forwards} forward pass(es) inside trial {trial.number}")
    quality = [b for b in ctx.budgets if b.metric not in COST_METRICS]
    for b in quality:
        trial.set_constraint(str(b), b.violation(metrics.get(b.metric, math.nan)))
    bad = [b for b in quality if b.violation(metrics.get(b.metric, math.nan)) > 0]
    record.write(trial, metrics=_jsonable(metrics), status="infeasible" if bad else "ok",
                 reason="; ".join(f"{b.metric} = {metrics[b.metric]:.4g} violates {b}" for b in bad))
    return _values(ctx, metrics)


def mean_over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' metrics, each number averaged over them; with several runs, also
    ``seed_std/<metric>`` (the spread between seeds) for each headline number (not per task)."""
    from ..distill.trainer import mean_of_readings

    if len(per_seed) == 1:
        return dict(per_seed[0])
    out = mean_of_readings(per_seed[:-1], per_seed[-1])
    for key, value in per_seed[-1].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "/" not in key:
            out[f"seed_std/{key}"] = statistics.stdev(float(m[key]) for m in per_seed)
    return out


def _values(ctx: TrialContext, metrics: dict[str, Any]) -> float | tuple[float, ...]:
    """Objective values; a quality metric not measured (infeasible before training) is its worst value."""
    values = []
    for o in ctx.objectives:
        v = metrics.get(o.metric)
        if v is None:
            v = 0.0 if METRICS[o.metric][0] == "maximize" else math.inf
        values.append(float(v))
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
    # worker and retry_of describe this trial, not the result it copies: they stay as written
    reused = dataclasses.replace(first, status=first.status or "ok", train_steps=0, worker=None, retry_of=None,
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
