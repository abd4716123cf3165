"""Timing an ONNX model with onnxruntime: fixed inputs, warm-up, statistics.

Shared by local measurements (``dime_nas.cost.latency``) and the agent, so a number
means the same on both sides. numpy and onnxruntime only.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
               "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


def latency_stats(times_ms: Any) -> dict[str, float]:
    """Median, p10, p90, p99, mean, std (population) and cv of per-call times in ms."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("latency_stats needs a non-empty 1-D array of finite, non-negative times")
    mean, std = float(t.mean()), float(t.std())
    return {
        "median_ms": float(np.median(t)),
        "p10_ms": float(np.percentile(t, 10)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": mean,
        "std_ms": std,
        "cv": std / mean if mean > 0 else 0.0,
    }


def timed_calls(call: Callable[[], Any], warmup: int, runs: int) -> list[float]:
    """``warmup`` untimed calls, then the wall time in ms of each of ``runs`` calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def timed_sessions(open_session: Callable[[], Callable[[], Any]], warmup: int, runs: int,
                   sessions: int = 1) -> dict[str, Any]:
    """``runs`` timed calls split over ``sessions`` fresh sessions, each warmed up first.

    ``open_session`` opens a session and returns its call. On a shared or virtual machine
    an onnxruntime session now and then runs a model far slower than the next one does
    (thread placement, memory layout): the median is the median of the session medians,
    which one such session cannot move; p10-p90, mean and cv are over all calls.
    """
    if not 1 <= sessions <= runs:
        raise ValueError(f"sessions must be between 1 and runs ({runs}), got {sessions}")
    times: list[float] = []
    medians: list[float] = []
    for i in range(sessions):
        t = timed_calls(open_session(), warmup, runs // sessions + (1 if i < runs % sessions else 0))
        times += t
        medians.append(float(np.median(t)))
    return {**latency_stats(times), "median_ms": float(np.median(medians)), "session_medians_ms": medians,
            "runs": len(times), "sessions": sessions}


def fixed_input(shape: list[int] | tuple[int, ...], dtype: Any, seed: int = 0) -> np.ndarray:
    """A deterministic input: normal noise for floats, ids in [1, 256) for integers."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(1, 256, size=list(shape), dtype=dtype)  # valid ids in any vocabulary
    if dtype == np.bool_:
        return rng.integers(0, 2, size=list(shape), dtype=np.uint8).astype(np.bool_)
    if dtype in (np.float32, np.float64):  # drawn in the input's type: no float64 copy of a float32 input
        return rng.standard_normal(list(shape), dtype=dtype)
    return rng.standard_normal(list(shape), dtype=np.float32).astype(dtype)


def session_options(threads: int) -> Any:
    """onnxruntime options of every measurement: ``threads`` intra-op, 1 inter-op, sequential."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def usable_providers(requested: list[str]) -> list[str]:
    """The requested execution providers available here, in the requested order."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    providers = [p for p in requested if p in available]
    if not providers:
        raise ValueError(f"none of the providers {list(requested)} is available here "
                         f"(available: {sorted(available)})")
    return providers
