"""Latency of exported towers on a target: backends, statistics, machine facts.

Convention: a latency is the wall time of one call on a fixed batch of
``target.batch_size`` inputs, after ``target.warmup`` untimed calls; statistics are
over ``target.runs`` timed calls. A model's latency on a target is the sum of the
medians of the towers the target counts. Medians of small models drift 20-40%
between runs on a shared machine: compare candidates as ratios within one run.
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

from dime_nas.agent.timing import latency_stats, session_options, timed_calls, timed_sessions
from dime_nas.cost.backend import LatencyBackend, LatencyMeasurement
from dime_nas.cost.onnx_export import ExportedTower, export_tower
from dime_nas.cost.remote import RemoteBackend
from dime_nas.cost.targets import Target
from dime_nas.cost.towers import Tower


@functools.cache
def machine_facts() -> dict[str, Any]:
    """What a latency number was measured on (recorded with every measurement)."""
    facts: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    for module in ("onnxruntime", "torch"):
        try:
            facts[module] = __import__(module).__version__
        except ImportError:
            facts[module] = None
    return facts


def _machine_now() -> dict[str, Any]:
    """Machine facts plus the 1-minute load average (other work on a shared machine)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {**machine_facts(), "load_avg_1m": load}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# ---- backends -------------------------------------------------------------------------------

class OnnxRuntimeBackend(LatencyBackend):
    """onnxruntime on this machine: intra-op threads from the target, inter-op 1."""

    name = "onnxruntime"

    def measure(self, exported: ExportedTower, target: Target) -> LatencyMeasurement:
        import onnxruntime as ort

        path = exported.path_for(target)
        problem = check_target_usable(target)
        if problem:  # never time on the CPU what a GPU target's budget is about
            raise RuntimeError(problem)
        feed = {exported.input_name: exported.example_input(target.batch_size)}
        providers: list[str] = []

        def open_session() -> Any:
            session = ort.InferenceSession(str(path), session_options(target.intra_op_threads),
                                           providers=list(target.providers))
            providers[:] = session.get_providers()
            return lambda: session.run(None, feed)

        stats = timed_sessions(open_session, target.warmup, target.runs, target.sessions)
        return LatencyMeasurement(
            tower=exported.tower, target=target.name, backend=self.name, **stats, warmup=target.warmup,
            batch=target.batch_size, threads=target.intra_op_threads, providers=providers,
            precision=target.precision, machine=_machine_now(),
        )


# The backend of each Target.backend value measured from ONNX files ("torch" times eager modules instead).
LATENCY_BACKENDS: dict[str, type[LatencyBackend]] = {OnnxRuntimeBackend.name: OnnxRuntimeBackend,
                                                     RemoteBackend.name: RemoteBackend}
# What to install for an execution provider that is missing here.
PROVIDER_PACKAGES = {"CUDAExecutionProvider": "onnxruntime-gpu", "TensorrtExecutionProvider": "onnxruntime-gpu",
                     "OpenVINOExecutionProvider": "onnxruntime-openvino",
                     "DmlExecutionProvider": "onnxruntime-directml", "CoreMLExecutionProvider": "onnxruntime (macOS)"}


def check_target_usable(target: Target) -> str | None:
    """Why ``target`` cannot be measured here (None when it can).

    Every execution provider a local target names must be available here: a missing GPU
    provider would otherwise fall back to the CPU and a GPU budget be judged on CPU timings.
    A remote target's providers are the device's (its agent refuses what it lacks).
    """
    if target.backend == "torch":
        return None
    if target.backend not in LATENCY_BACKENDS:
        return f"target {target.name!r}: backend {target.backend!r} cannot measure from this machine"
    if target.backend != "onnxruntime":
        return None
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in target.providers if p not in available]
    if not missing:
        return None
    install = sorted({PROVIDER_PACKAGES.get(p, "an onnxruntime build with it") for p in missing})
    return (f"target {target.name!r} needs execution provider(s) {', '.join(missing)}, not available here "
            f"(available: {', '.join(available)}); install {' or '.join(install)} in place of onnxruntime, "
            "or choose another target")


def torch_eager_latency(tower: Tower, threads: int = 2, batch: int = 1, warmup: int = 10,
                        runs: int = 50, target: str = "torch-eager") -> LatencyMeasurement:
    """Latency of the tower in PyTorch eager mode (fp32, inference mode, fast paths on).

    The baseline ONNX speed is compared with. ``torch.set_num_threads`` is restored after.
    """
    import torch

    module, x = tower.module, tower.example_input(batch)
    was_training, old_threads = module.training, torch.get_num_threads()
    module.eval()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            times = timed_calls(lambda: module(x), warmup, runs)
    finally:
        torch.set_num_threads(old_threads)
        module.train(was_training)
    return LatencyMeasurement(
        tower=tower.name, target=target, backend="torch", **latency_stats(times), runs=len(times),
        warmup=warmup, batch=batch, threads=threads, providers=["torch-cpu-eager"],
        precision="fp32", machine=_machine_now(),
    )


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
        NotImplementedError: the target's backend has no implementation yet.
    """
    missing = [t for t in target.towers if t not in towers]
    if missing:
        raise ValueError(f"target {target.name!r} counts tower(s) {missing}, but only {sorted(towers)} were given")
    if target.backend != "torch" and target.backend not in LATENCY_BACKENDS:
        raise NotImplementedError(f"target {target.name!r}: backend {target.backend!r} is not implemented")
    results: dict[str, Any] = {}
    for name in target.towers:
        tower = towers[name]
        if target.backend == "torch":
            measurement = torch_eager_latency(tower, target.intra_op_threads, target.batch_size,
                                              target.warmup, target.runs, target=target.name)
            results[name] = {"export": None, "latency": measurement.to_dict()}
            continue
        exported = (exports or {}).get(name) or export_tower(tower, Path(workdir) / f"{name}.onnx",
                                                             int8=target.precision == "int8")
        if exports is not None:
            exports[name] = exported
        measurement = LATENCY_BACKENDS[target.backend]().measure(exported, target)
        results[name] = {"export": exported.to_dict(), "latency": measurement.to_dict()}
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
