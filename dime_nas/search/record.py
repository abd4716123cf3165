"""What a trial stores: the :class:`TrialRecord`, kept as Optuna user attributes (one per field).

A trial writes its record in steps, as it learns things (the architecture first, so other
workers can see what is in flight; then its cost; then its training and scores), so every
field is optional and :func:`write` stores just the fields given. Readers (report, study
loop, hand-off, latency predictor) read a whole record with :meth:`TrialRecord.from_trial`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna

Status = Literal["ok", "infeasible", "failed", "pruned", "interrupted", "running", "waiting"]
_BY_STATE: dict[str, Status] = {"COMPLETE": "ok", "PRUNED": "pruned", "FAIL": "interrupted", "RUNNING": "running",
                                "WAITING": "waiting"}


@dataclass
class TrialRecord:
    """One trial's record. ``None`` (or empty) means "not written" and is not stored."""

    arch_key: str | None = None  # the student's architecture key
    config: dict[str, Any] | None = None  # StudentConfig.to_dict()
    describe: str | None = None  # one-line description of the student
    status: Status | None = None  # ok / infeasible / failed / pruned / interrupted; a repeat keeps its original's
    reason: str | None = None  # why it is infeasible, failed or pruned ("" when ok)
    # params_m, gmacs, gflops, latency median/p10/p90 (total and ``per_tower``), ``latency_source``
    # (measured or predicted), ``latency_decision`` near a latency budget, the measuring device
    cost: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # every objective's metric + per-task scores
    timings: dict[str, float] = field(default_factory=dict)  # seconds: cost_s, train_s, eval_s
    train_steps: int | None = None  # 0 for a student rejected before training, and for a repeat
    train_stopped_by: str | None = None  # what ended the short run (steps, seconds)
    train_device: str | None = None  # where it trained (cpu, cuda:0)
    loss_curve: list[dict[str, float]] = field(default_factory=list)  # [{step, total}]
    teacher_forwards: int | None = None  # always 0: the teacher never runs inside a trial
    reused_from: int | None = None  # a repeat: the trial whose result it reuses
    retry_of: int | None = None  # a retry: the interrupted trial it runs again
    worker: dict[str, Any] | None = None  # host, pid and device of the process that ran it
    traceback: str | None = None  # a failed trial's traceback (its tail)

    def to_attrs(self) -> dict[str, Any]:
        """The fields that were written, as Optuna user attributes."""
        return {f.name: v for f in dataclasses.fields(self)
                if (v := getattr(self, f.name)) is not None and v != {} and v != []}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TrialRecord:
        """A record from user attributes; keys this version does not know are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in attrs.items() if k in names})

    @classmethod
    def from_trial(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        return cls.from_attrs(trial.user_attrs)

    @property
    def is_repeat(self) -> bool:
        """A reuse of an earlier trial's result (not a distinct architecture)."""
        return self.reused_from is not None


def write(trial: optuna.Trial, **fields: Any) -> None:
    """Store some fields of ``trial``'s record (a misspelt field name is a TypeError)."""
    for key, value in TrialRecord(**fields).to_attrs().items():
        trial.set_user_attr(key, value)


def trial_status(trial: optuna.trial.FrozenTrial) -> Status:
    """The trial's status; a failed trial that never recorded one was cut short (``interrupted``)."""
    status = trial.user_attrs.get("status")
    if status and trial.state != optuna.trial.TrialState.RUNNING:
        return status  # type: ignore[return-value]
    return _BY_STATE[trial.state.name]
