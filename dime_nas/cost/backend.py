"""The latency backend interface: what a backend returns (``LatencyMeasurement``) and
what it must do (``LatencyBackend``). The backends are in ``latency`` (onnxruntime here)
and ``remote`` (onnxruntime on the target device, through its agents).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from dime_nas.cost.onnx_export import ExportedTower
from dime_nas.cost.targets import Target


@dataclass
class LatencyMeasurement:
    """Timing statistics of one tower on one target (milliseconds per call)."""

    tower: str
    target: str
    backend: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float  # std / mean: the run-to-run spread
    runs: int
    warmup: int
    batch: int
    threads: int
    providers: list[str]  # what actually ran (onnxruntime's session.get_providers())
    precision: str
    machine: dict[str, Any] = field(default_factory=dict)
    sessions: int = 1  # fresh sessions the runs were split over (median_ms: the median of their medians)
    session_medians_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LatencyBackend(ABC):
    """Measures the latency of an exported tower on a target.

    Call order: ``measure_target`` exports each tower the target counts (an fp32 ONNX
    file, parity-checked against torch, plus its int8 variant when the target's
    precision is int8), then calls ``measure(exported, target)`` once per tower.

    Invariants every implementation keeps (checked by the shared conformance test):
    it runs the file of ``target.precision`` at ``target.batch_size`` on a fixed input,
    in ``target.sessions`` fresh sessions, each ``target.warmup`` untimed calls then its
    share of exactly ``target.runs`` timed ones (the median: of the session medians); it returns
    finite positive statistics, the providers that actually ran (non-empty) and the
    machine facts; it leaves the files untouched and holds no state between calls.
    """

    name: ClassVar[str]

    @abstractmethod
    def measure(self, exported: ExportedTower, target: Target) -> LatencyMeasurement:
        """Time ``exported`` on ``target``."""
