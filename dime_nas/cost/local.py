"""The backends that time a tower on this machine: onnxruntime (from the ONNX export) and
PyTorch eager (the torch module itself, the baseline ONNX is compared with), and the machine
facts recorded with every number.
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dime_nas.agent.timing import latency_stats, session_options, timed_calls, timed_sessions
from dime_nas.cost.backend import LatencyBackend, LatencyMeasurement

if TYPE_CHECKING:
    from dime_nas.cost.onnx_export import ExportedTower
    from dime_nas.cost.targets import Target
    from dime_nas.cost.towers import Tower

# What to install for an execution provider that is missing here.
PROVIDER_PACKAGES = {"CUDAExecutionProvider": "onnxruntime-gpu", "TensorrtExecutionProvider": "onnxruntime-gpu",
                     "OpenVINOExecutionProvider": "onnxruntime-openvino",
                     "DmlExecutionProvider": "onnxruntime-directml", "CoreMLExecutionProvider": "onnxruntime (macOS)"}


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


class OnnxRuntimeBackend(LatencyBackend):
    """onnxruntime on this machine: intra-op threads from the target, inter-op 1."""

    name = "onnxruntime"

    def check_usable(self, target: Target) -> str | None:
        """Every execution provider the target names must be available here: a missing GPU
        provider would otherwise fall back to the CPU and a GPU budget be judged on CPU timings."""
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in target.providers if p not in available]
        if not missing:
            return None
        install = sorted({PROVIDER_PACKAGES.get(p, "an onnxruntime build with it") for p in missing})
        return (f"target {target.name!r} needs execution provider(s) {', '.join(missing)}, not available here "
                f"(available: {', '.join(available)}); install {' or '.join(install)} in place of onnxruntime, "
                "or choose another target")

    def measure(self, exported: ExportedTower, target: Target) -> LatencyMeasurement:
        import onnxruntime as ort

        path = exported.path_for(target)
        problem = self.check_usable(target)
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


class TorchEagerBackend(LatencyBackend):
    """PyTorch eager on this machine's CPU (fp32, inference mode, fast paths on): no export."""

    name = "torch"
    needs_onnx = False

    @classmethod
    def check_target(cls, target: Target) -> str | None:
        if target.precision != "fp32":
            return "the torch (eager) backend measures fp32 only"
        if target.sessions != 1:
            return "sessions are onnxruntime's; the torch (eager) backend has none"
        return None

    def measure(self, tower: Tower, target: Target) -> LatencyMeasurement:
        return torch_eager_latency(tower, target.intra_op_threads, target.batch_size, target.warmup, target.runs,
                                   target=target.name)


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
    stats = latency_stats(times)
    return LatencyMeasurement(
        tower=tower.name, target=target, backend="torch", **stats, runs=len(times), warmup=warmup, batch=batch,
        threads=threads, providers=["torch-cpu-eager"], precision="fp32", machine=_machine_now(),
        session_medians_ms=[stats["median_ms"]],  # one session: the process itself
    )
