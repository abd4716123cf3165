"""The latency backend interface: what a backend returns (``LatencyMeasurement``) and what it
must do (``LatencyBackend``). The shipped backends are in ``local`` (onnxruntime and torch eager
on this machine) and ``remote`` (onnxruntime on the target device, through its agents); the
registry a target's ``backend`` names one from is ``latency.LATENCY_BACKENDS``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from dime_nas.errors import ConfigError

if TYPE_CHECKING:
    from dime_nas.cost.onnx_export import ExportedTower
    from dime_nas.cost.targets import Target
    from dime_nas.cost.towers import Tower


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
    """Measures the latency of one tower on a target.

    Call order: a target naming the backend is validated by :meth:`check_target` (and its
    ``options`` read by :meth:`parse_options`) when it is loaded; before anything is timed,
    :meth:`check_usable` says whether this machine can measure it now. Then ``measure_target``
    calls :meth:`measure` once per tower the target counts, with the tower's export (an fp32
    ONNX file, parity-checked against torch, plus its int8 variant when the target's precision
    is int8) when :attr:`needs_onnx`, else with the torch tower itself.

    Invariants every implementation keeps (checked by the shared conformance test over the
    registry): it runs the tower at ``target.precision`` and ``target.batch_size`` on a fixed
    input, in ``target.sessions`` fresh sessions, each ``target.warmup`` untimed calls then its
    share of exactly ``target.runs`` timed ones (the median: of the session medians); it returns
    finite positive statistics, the providers that actually ran (non-empty) and the machine
    facts; it leaves the files untouched and holds no state between calls.
    """

    name: ClassVar[str]
    needs_onnx: ClassVar[bool] = True  # measure() takes an ExportedTower; False: the torch Tower

    @classmethod
    def check_target(cls, target: Target) -> str | None:
        """What this backend cannot do of the target's settings (None: nothing)."""
        return None

    @classmethod
    def parse_options(cls, options: Mapping[str, Any] | None) -> Any:
        """The target's ``options`` (settings only this backend reads) in the form :meth:`measure`
        reads them; this default takes none. Raises ConfigError naming a bad option."""
        if options:
            raise ConfigError(f"backend {cls.name!r} takes no options, got {', '.join(map(str, options))}")
        return None

    def check_usable(self, target: Target) -> str | None:
        """Why this machine cannot measure ``target`` now (e.g. a missing GPU provider); None when it can."""
        return None

    def devices(self, target: Target) -> list[dict[str, Any]]:
        """The devices that measure for ``target``, described for ``dime-nas targets`` (each
        ``{"url", "device"}`` or ``{"url", "error"}``); none by default: this machine."""
        return []

    @abstractmethod
    def measure(self, tower: ExportedTower | Tower, target: Target) -> LatencyMeasurement:
        """Time ``tower`` on ``target``."""
