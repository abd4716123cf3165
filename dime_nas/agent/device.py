"""What the device is: the description the agent returns on ``GET /v1/device``."""
from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what the platform module knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            # x86 says "model name"; ARM boards say "Model" (the board) or "Hardware"
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def describe_device(labels: dict[str, str] | None = None) -> dict[str, Any]:
    """CPU, cores, memory, OS, onnxruntime version and providers, and the user's labels.

    The keys ``platform``, ``processor``, ``cpu_count`` and ``onnxruntime`` match the
    machine facts of a local measurement, so both kinds read alike in reports.
    """
    import onnxruntime as ort

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers_available": list(ort.get_available_providers()),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "labels": dict(labels or {}),
    }
