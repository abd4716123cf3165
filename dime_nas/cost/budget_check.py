"""Latency budget decisions that survive timing noise.

One median decides nothing when it lies near the budget: medians of small models drift
20-40% between runs on a shared machine, so such a student would pass in one run and
fail in the next. A candidate whose first total median lies within ``margin`` of a
latency budget is re-measured in ``rounds`` more rounds; each round times the candidate
and then a fixed reference tower, so both see the same machine state. The budget is
decided on the pooled median (the median over all rounds, the first included); the
reference's medians are recorded beside it as a witness of how loaded the machine was.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from ..metrics import Budget

# A small fixed ViT image tower (2 layers, width 96, 8-px patches at 32 px): cheap to time,
# in the latency range of the students it is measured beside.
REFERENCE_STUDENT = {"embed_dim": 256, "vision": {"kind": "vit", "image_size": 32, "patch_size": 8, "layers": 2,
                                                  "width": 96, "heads": 2, "mlp_ratio": 4.0},
                     "text": {"kind": "teacher"}}


@dataclass
class LatencyDecision:
    """How a latency budget was decided, for the trial record."""

    budget: str  # e.g. "latency_ms <= 0.3"
    margin: float  # relative band around the budget value that triggers re-measurement
    first_ms: float  # the first total median
    near: bool  # the first median lay within the margin: re-measured
    rounds_ms: list[float] = field(default_factory=list)  # candidate total median per round (first included)
    reference_ms: list[float] = field(default_factory=list)  # reference tower median per re-measurement round
    pooled_ms: float = 0.0  # median over rounds_ms: what the budget is decided on
    feasible: bool = True

    @property
    def spread_ms(self) -> tuple[float, float]:
        """p10-p90 of the per-round medians (a single round: that value twice)."""
        r = np.asarray(self.rounds_ms, dtype=float)
        return float(np.percentile(r, 10)), float(np.percentile(r, 90))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spread_ms"] = list(self.spread_ms)
        return d


def decide_latency_budget(budget: Budget, first_ms: float, measure_candidate: Callable[[], float],
                          measure_reference: Callable[[], float] | None = None, *, margin: float = 0.15,
                          rounds: int = 4) -> LatencyDecision:
    """Decide ``budget`` for a candidate whose first total median is ``first_ms``.

    Args:
        budget: a ``latency_ms`` budget.
        first_ms: the candidate's first measured total median.
        measure_candidate: re-times the candidate, returns its total median (ms).
        measure_reference: times the reference tower, returns its median (ms); called
            right after each candidate round.
        margin: re-measure when ``|first_ms - budget| <= margin * budget``.
        rounds: re-measurement rounds (each one full measurement of the candidate).
    """
    if budget.metric != "latency_ms":
        raise ValueError(f"decide_latency_budget decides latency budgets, got {budget}")
    if margin < 0 or rounds < 0:
        raise ValueError(f"margin and rounds must be >= 0, got {margin} and {rounds}")
    near = abs(first_ms - budget.value) <= margin * abs(budget.value) and rounds > 0
    decision = LatencyDecision(str(budget), margin, float(first_ms), near, rounds_ms=[float(first_ms)])
    if near:
        for _ in range(rounds):
            decision.rounds_ms.append(float(measure_candidate()))
            if measure_reference is not None:
                decision.reference_ms.append(float(measure_reference()))
    decision.pooled_ms = float(np.median(decision.rounds_ms))
    decision.feasible = budget.violation(decision.pooled_ms) <= 0
    return decision


def reference_timer(target: Any, workdir: str) -> Callable[[], float]:
    """A callable timing the reference image tower on ``target`` (built and exported on first use)."""
    import dataclasses
    from pathlib import Path

    from ..student import StudentConfig
    from .latency import measure_target
    from .towers import towers_from_student

    image_only = dataclasses.replace(target, towers=("image",))
    state: dict[str, Any] = {"exports": {}}

    def measure() -> float:
        if "towers" not in state:
            state["towers"] = {"image": towers_from_student(StudentConfig.from_dict(REFERENCE_STUDENT))["image"]}
            Path(workdir).mkdir(parents=True, exist_ok=True)
        return measure_target(state["towers"], image_only, workdir, state["exports"])["total_median_ms"]

    return measure
