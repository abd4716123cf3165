"""The metrics a trial can produce, one :class:`Metric` record each, and budgets on them.

Config validation, the trial objective, the cost meter, the Pareto maths, the report and
the hand-off all read :data:`METRICS`: adding a metric is one entry here (plus the code
that computes it: the cost meter for a cost metric, ``evaluate.py`` for a quality metric).
``tests/test_metrics.py`` checks that the registry and what the evaluators produce agree.
Standard library only.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from .errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from .config import EvalConfig

DIRECTIONS = ("maximize", "minimize")
KINDS = ("cost", "quality")


def always(evaluation: EvalConfig) -> bool:
    """Every experiment produces it (the cost metrics: measured for every student)."""
    return True


def with_tasks(evaluation: EvalConfig) -> bool:
    """Any zero-shot task, shifted or not."""
    return evaluation.shapes is not None or bool(evaluation.tasks)


def with_in_distribution_tasks(evaluation: EvalConfig) -> bool:
    """A zero-shot task that is not a distribution shift."""
    return evaluation.shapes is not None or any(not t.shifted for t in evaluation.tasks)


def with_shifted_tasks(evaluation: EvalConfig) -> bool:
    """A distribution-shifted zero-shot task."""
    return (evaluation.shapes is not None and bool(evaluation.shapes.shifts)) or any(t.shifted for t in evaluation.tasks)


def with_retrieval(evaluation: EvalConfig) -> bool:
    """A paired image-caption set."""
    return (evaluation.shapes is not None and evaluation.shapes.retrieval_size > 0) or evaluation.retrieval is not None


@dataclass(frozen=True)
class Metric:
    """One number a trial records, which objectives and budgets may name."""

    name: str
    direction: str  # the natural direction of "better": maximize or minimize
    kind: str  # "cost" (measured before any training, by the cost meter) or "quality" (by the evaluator)
    unit: str  # shown in reports, e.g. "ms"
    description: str  # what it is, in one line
    label: str | None = None  # axis label of the report's plots (default: "<name> (<unit>)")
    bounded: bool = False  # a quality within [0, 1]: 0 is its worst value (a fixed hypervolume reference)
    produced_by: Callable[[EvalConfig], bool] = always  # whether an experiment's `eval` section produces it

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS or self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r}: direction must be one of {DIRECTIONS} and kind one of {KINDS}")

    @property
    def axis_label(self) -> str:
        return self.label or f"{self.name} ({self.unit})"

    @property
    def worst(self) -> float:
        """The value of a student that was never scored (over budget before training)."""
        return 0.0 if self.direction == "maximize" else math.inf


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "maximize", "quality", "top-1",
           "mean zero-shot top-1 over the in-distribution evaluation tasks (0..1)",
           label="zero-shot accuracy, short-run proxy (top-1)", bounded=True, produced_by=with_in_distribution_tasks),
    # the image tower alone, while a student's own text tower (which learns late) catches up;
    # as a ranking of such students it held out no better than accuracy (experiments/results)
    Metric("image_accuracy", "maximize", "quality", "top-1",
           "accuracy of the image tower against the teacher's class embeddings "
           "(= accuracy for a student with the teacher's text tower)",
           label="image-tower zero-shot accuracy with the teacher's text, short-run proxy (top-1)", bounded=True,
           produced_by=with_in_distribution_tasks),
    Metric("shifted_accuracy", "maximize", "quality", "top-1",
           "mean zero-shot top-1 over the distribution-shifted tasks (0..1)", bounded=True,
           produced_by=with_shifted_tasks),
    Metric("retrieval", "maximize", "quality", "R@1",
           "mean of image->text and text->image R@1 on the paired set (0..1)", bounded=True,
           produced_by=with_retrieval),
    Metric("agreement", "maximize", "quality", "fraction",
           "fraction of evaluation images where student and teacher predict the same class", bounded=True,
           produced_by=with_tasks),
    Metric("teacher_kl", "minimize", "quality", "nats",
           "KL(teacher || student) of the class-similarity distributions, mean over tasks", produced_by=with_tasks),
    Metric("latency_ms", "minimize", "cost", "ms", "summed median latency of the counted towers on the target (ms)",
           label="latency on the target (ms, median, counted towers)"),
    Metric("gmacs", "minimize", "cost", "GMACs",
           "multiply-accumulates of the counted towers, in units of 1e9, per sample",
           label="GMACs per image (counted towers, batch 1)"),
    Metric("params_m", "minimize", "cost", "M params", "parameters of the counted towers, in millions",
           label="parameters (M)"),
)}


def cost_metrics() -> tuple[str, ...]:
    """The metrics the cost meter measures, in registry order."""
    return tuple(name for name, m in METRICS.items() if m.kind == "cost")


def quality_metrics() -> tuple[str, ...]:
    """The metrics an evaluator produces, in registry order."""
    return tuple(name for name, m in METRICS.items() if m.kind == "quality")


def evaluated_metrics(evaluation: EvalConfig) -> set[str]:
    """Exactly the metrics a trial of an experiment with this ``eval`` section produces
    (its objectives and budgets may name only these)."""
    return {name for name, m in METRICS.items() if m.produced_by(evaluation)}


def headline_quality(objectives: Iterable[str], default: str = "accuracy") -> str:
    """The first quality objective: what the report ranks and selects students by."""
    return next((name for name in objectives if name in METRICS and METRICS[name].kind == "quality"), default)


_BUDGET_RE = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


@dataclass
class Budget:
    """A hard constraint on one metric, e.g. ``latency_ms <= 8``."""

    metric: str
    op: str  # "<=" or ">="
    value: float

    @classmethod
    def parse(cls, text: str) -> Budget:
        m = _BUDGET_RE.match(text)
        if not m:
            raise ConfigError(f"cannot read budget {text!r}: write it as `metric <= number` or `metric >= number`",
                              key="budgets")
        metric, op, value = m.group(1), m.group(2), float(m.group(3))
        if metric not in METRICS:
            raise ConfigError(f"budget on unknown metric {metric!r}" + did_you_mean(metric, METRICS), key="budgets")
        return cls(metric, op, value)

    def violation(self, measured: float) -> float:
        """Optuna constraint value: <= 0 when the budget holds, else how far it is exceeded."""
        return measured - self.value if self.op == "<=" else self.value - measured

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"
