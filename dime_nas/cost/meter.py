"""What a student costs on one target, judged against a search's budgets.

The :class:`CostMeter` counts params and MACs of the towers the target counts, then
times them there (exported to ONNX, or in torch eager for a torch target). Two rules
keep the latency trustworthy on a noisy machine: a first median near a latency budget
is re-measured in rounds and decided on the pooled median (``budget_check``), and a
student far from it is decided by a latency predictor instead, when the experiment has
one (``latency_gate``). While it times, local workers sharing the machine pause their
training (the timing lock). A search's trials and the hand-off's full runs both measure
through it, so a student's cost means one thing everywhere.
"""
from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..metrics import cost_metrics


@dataclass
class TimedTowers:
    """The towers a measurement timed and their exports, kept in ``workdir`` to be timed again."""

    workdir: str
    towers: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, Any] = field(default_factory=dict)


class CostMeter:
    """Measures students' cost on ``target``.

    Args:
        target: the latency target (``cost.targets.Target``).
        teacher_text_cfg: the teacher's text-tower config, for students that reuse it.
        budgets: the search's budgets (``metric op value`` records); the latency ones steer
            re-measurement near a budget and the latency predictor.
        near_budget_margin, near_budget_rounds: the near-budget rule (``budget_check``).
        predictor: a ``LatencyPredictorConfig``: decide students clearly far from the latency
            budget by prediction (None: measure every student).
        timing_gate: held while timing, so local workers of this machine do not train meanwhile.
    """

    def __init__(self, target: Any, teacher_text_cfg: dict[str, Any] | None, budgets: Sequence[Any] = (), *,
                 near_budget_margin: float = 0.15, near_budget_rounds: int = 4, predictor: Any = None,
                 timing_gate: Any = None) -> None:
        self.target, self.teacher_text_cfg, self.budgets = target, teacher_text_cfg, list(budgets)
        self.near_budget_margin, self.near_budget_rounds = near_budget_margin, near_budget_rounds
        self.predictor, self.timing_gate = predictor, timing_gate
        self._gate: Any = None

    @classmethod
    def for_experiment(cls, config: Any, teacher_text_cfg: dict[str, Any] | None) -> CostMeter:
        """The meter of an experiment (an ``ExperimentConfig``): its target, budgets and latency rules."""
        from .targets import get_target

        return cls(get_target(config.target, config.targets_file), teacher_text_cfg, config.budget_list,
                   near_budget_margin=config.search.near_budget_margin,
                   near_budget_rounds=config.search.near_budget_rounds, predictor=config.latency_predictor)

    def measure(self, config: Any, keep: TimedTowers | None = None) -> dict[str, Any]:
        """Params, MACs and target latency of the towers the target counts, for a StudentConfig.

        ``keep``: the exports go to its folder (which outlives this call) and it receives the
        timed towers, for :meth:`time_again`; None: a temporary folder, nothing kept.
        """
        from .flops import tower_cost
        from .latency import measure_target
        from .towers import towers_from_student

        towers = towers_from_student(config, self.teacher_text_cfg)
        counted = [t for t in self.target.towers if t in towers]
        if len(counted) != len(self.target.towers):
            missing = sorted(set(self.target.towers) - set(towers))
            raise ValueError(f"target {self.target.name} counts tower(s) {missing} this student does not have")
        per_tower = {name: tower_cost(towers[name]) for name in counted}
        out: dict[str, Any] = {
            "towers": counted,
            "params_m": sum(c["params"] for c in per_tower.values()) / 1e6,
            "gmacs": sum(c["gmacs"] for c in per_tower.values()),
            "gflops": sum(c["gflops"] for c in per_tower.values()),
            "per_tower": {n: {"params": c["params"], "gmacs": c["gmacs"], "gflops": c["gflops"]}
                          for n, c in per_tower.items()},
        }
        out["target"] = self.target.name
        gate = self.gate
        decided = gate.decide(config.to_dict(), out) if gate else None
        if decided:  # clearly far from the budget: no export, no measurement
            return {**out, **decided}
        timed = {n: towers[n] for n in counted}
        exports: dict[str, Any] = keep.exports if keep is not None else {}
        workdir = (contextlib.nullcontext(keep.workdir) if keep is not None
                   else tempfile.TemporaryDirectory(prefix="dime_nas_cost_"))
        with self.timing(), workdir as tmp:
            lat = measure_target(timed, self.target, tmp, exports)
            out["latency_ms"], out["latency_source"] = lat["total_median_ms"], "measured"
            out["latency_p10_ms"], out["latency_p90_ms"] = lat["total_p10_ms"], lat["total_p90_ms"]
            decision = self._decide_latency(
                lat["total_median_ms"], lambda: measure_target(timed, self.target, tmp, exports)["total_median_ms"],
                tmp)
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

    def time_again(self, cost: dict[str, Any], kept: TimedTowers) -> dict[str, Any]:
        """The cost with its latency timed once more (after training); the lower reading is kept.

        On a shared machine, another process or virtual machine now and then slows every
        reading for a second or more, and only ever slows it: of two readings taken a training
        run apart, the lower is the nearer to what the student costs. Both are recorded. A
        latency decided on a near-budget pooled median, or predicted, is left as it is.
        """
        from .latency import measure_target

        if cost.get("latency_source") != "measured" or cost.get("latency_decision", {}).get("near") or not kept.towers:
            return cost
        with self.timing():
            again = measure_target(kept.towers, self.target, kept.workdir, kept.exports)
        out = {**cost, "latency_readings_ms": [cost["latency_ms"], again["total_median_ms"]]}
        if again["total_median_ms"] < cost["latency_ms"]:
            out.update(latency_ms=again["total_median_ms"], latency_p10_ms=again["total_p10_ms"],
                       latency_p90_ms=again["total_p90_ms"])
            out["per_tower"] = {name: {**c, **_tower_latency(again["towers"][name]["latency"])}
                                if name in again["towers"] else c for name, c in cost["per_tower"].items()}
        return out

    def violations(self, cost: dict[str, Any]) -> list[tuple[Any, float]]:
        """Each cost budget with its Optuna constraint value (<= 0: it holds) for ``cost``."""
        return [(b, b.violation(cost[b.metric])) for b in self.budgets if b.metric in cost_metrics()]

    def timing(self) -> Any:
        """Held while timing: local workers of this machine do not train meanwhile."""
        return self.timing_gate.timing() if self.timing_gate is not None else contextlib.nullcontext()

    @property
    def gate(self) -> Any:
        """The latency predictor's gate, made on first use; None without a predictor or a latency budget."""
        if self._gate is None and self.predictor is not None:
            from .latency_gate import LatencyGate

            limits = [b.value for b in self.budgets if b.metric == "latency_ms" and b.op == "<="]
            if limits:
                self._gate = LatencyGate(self.predictor, self.target, min(limits))
        return self._gate

    def _decide_latency(self, first_ms: float, remeasure: Any, workdir: str) -> Any:
        """The LatencyDecision for the latency budget closest to ``first_ms`` (None without one)."""
        from .budget_check import decide_latency_budget, reference_timer

        budgets = [b for b in self.budgets if b.metric == "latency_ms"]
        if not budgets:
            return None
        budget = min(budgets, key=lambda b: abs(first_ms - b.value) / max(abs(b.value), 1e-12))
        return decide_latency_budget(budget, first_ms, remeasure, reference_timer(self.target, f"{workdir}/reference"),
                                     margin=self.near_budget_margin, rounds=self.near_budget_rounds)


def _tower_latency(m: dict[str, Any]) -> dict[str, Any]:
    """The per-tower latency fields a cost records from one measurement."""
    return {"latency_median_ms": m["median_ms"], "latency_p90_ms": m["p90_ms"], "latency_cv": m["cv"],
            "providers": m["providers"], "device": m["machine"]}
