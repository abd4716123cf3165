"""Latency of towers on a target: the registry of latency backends, and ``measure_target``.

Convention: a latency is the wall time of one call on a fixed batch of
``target.batch_size`` inputs, after ``target.warmup`` untimed calls; statistics are
over ``target.runs`` timed calls. A model's latency on a target is the sum of the
medians of the towers the target counts. Medians of small models drift 20-40%
between runs on a shared machine: compare candidates as ratios within one run.

Adding a backend is one class on the ``LatencyBackend`` interface (``cost/backend.py``) and
its line in :data:`LATENCY_BACKENDS`; targets, usability checks and ``measure_target``
read it from here.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dime_nas.cost.backend import LatencyBackend
from dime_nas.cost.local import OnnxRuntimeBackend, TorchEagerBackend
from dime_nas.cost.remote import RemoteBackend
from dime_nas.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from dime_nas.cost.onnx_export import ExportedTower
    from dime_nas.cost.targets import Target
    from dime_nas.cost.towers import Tower

# A target's `backend` -> the class that measures it.
LATENCY_BACKENDS: dict[str, type[LatencyBackend]] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,  # onnxruntime on this machine
    TorchEagerBackend.name: TorchEagerBackend,  # PyTorch eager on this machine (no export)
    RemoteBackend.name: RemoteBackend,  # onnxruntime on a device, through `dime-nas agent`
}


def backend_class(name: str) -> type[LatencyBackend]:
    """The backend called ``name``; an unknown name is a ConfigError listing the known ones."""
    if name not in LATENCY_BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(LATENCY_BACKENDS)}, got {name!r}"
                          + did_you_mean(name, LATENCY_BACKENDS))
    return LATENCY_BACKENDS[name]


def check_target_usable(target: Target) -> str | None:
    """Why ``target`` cannot be measured from this machine now (None when it can): its backend's
    own check (a local target's execution providers must all be available here; a remote
    target's are the device's, and its agent refuses what it lacks)."""
    return backend_class(target.backend)().check_usable(target)


def measure_target(towers: dict[str, Tower], target: Target, workdir: str | Path,
                   exports: dict[str, ExportedTower] | None = None) -> dict[str, Any]:
    """Export (if the backend needs ONNX) and time every tower the target counts.

    ``exports``, when given, keeps each tower's export by name: a repeated measurement
    of the same towers (a near-budget re-measurement) times the same files again.

    Returns:
        {"target", "towers": {name: {"export", "latency"}}, "total_median_ms", "convention"}.

    Raises:
        ValueError: a tower the target counts is missing (e.g. a student reusing the
            teacher's text tower, built without the teacher's text config).
    """
    missing = [t for t in target.towers if t not in towers]
    if missing:
        raise ValueError(f"target {target.name!r} counts tower(s) {missing}, but only {sorted(towers)} were given")
    backend = backend_class(target.backend)()
    results: dict[str, Any] = {}
    for name in target.towers:
        if not backend.needs_onnx:
            results[name] = {"export": None, "latency": backend.measure(towers[name], target).to_dict()}
            continue
        from dime_nas.cost.onnx_export import export_tower

        exported = (exports or {}).get(name) or export_tower(towers[name], Path(workdir) / f"{name}.onnx",
                                                             int8=target.precision == "int8")
        if exports is not None:
            exports[name] = exported
        results[name] = {"export": exported.to_dict(), "latency": backend.measure(exported, target).to_dict()}
    return {
        "target": target.to_dict(),
        "towers": results,
        "total_median_ms": sum(r["latency"]["median_ms"] for r in results.values()),
        "total_p10_ms": sum(r["latency"]["p10_ms"] for r in results.values()),
        "total_p90_ms": sum(r["latency"]["p90_ms"] for r in results.values()),
        "convention": (f"ms per call on a batch of {target.batch_size}: {target.runs} timed calls over "
                       f"{target.sessions} session(s), each after {target.warmup} warm-up calls, the median of the "
                       "session medians; total = sum of tower medians"),
    }
