"""Benchmark: the cost of a few student image towers and ViT-B-32's, measured in one run.

Prints params, GMACs, onnxruntime fp32/int8 median latency at 1 and 2 threads, torch
eager latency, and the eager/ONNX speed ratio, with the machine facts. Compare rows as
ratios: absolute medians drift 20-40% between runs on a shared machine.

Usage: python experiments/bench_cost.py [runs]   (timed runs per cell and round; default 15)
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dime_nas.cost.onnx_export import export_tower
from dime_nas.cost.flops import CONVENTION, tower_cost
from dime_nas.cost.local import OnnxRuntimeBackend, machine_facts, torch_eager_latency
from dime_nas.cost.targets import get_target
from dime_nas.cost.towers import Tower, resolve_model, towers_from_student
from dime_nas.student import StudentConfig, VisionTowerConfig

EMBED_DIM = 512  # ViT-B-32's embedding width, as a DIME-FM student would have


def _vit(layers: int, width: int, heads: int, patch: int) -> StudentConfig:
    return StudentConfig(embed_dim=EMBED_DIM, vision=VisionTowerConfig(
        kind="vit", image_size=224, layers=layers, width=width, heads=heads, mlp_ratio=4.0, patch_size=patch))


STUDENTS = {
    "vit-ti L12 W192 p16": _vit(12, 192, 3, 16),
    "vit-s L12 W384 p16": _vit(12, 384, 6, 16),
    "vit L6 W256 p32": _vit(6, 256, 4, 32),
    "convnext_atto": StudentConfig(embed_dim=EMBED_DIM, vision=VisionTowerConfig(
        kind="timm", timm_model="convnext_atto", image_size=224)),
}


def image_towers() -> dict[str, Tower]:
    towers = {name: towers_from_student(cfg)["image"] for name, cfg in STUDENTS.items()}
    towers["ViT-B-32 (open_clip)"] = resolve_model("ViT-B-32")[1]["image"]
    return towers


def bench(tower: Tower, workdir: Path, warmup: int, runs: int, rounds: int = 3) -> dict[str, float]:
    """One table row. Cells are measured round-robin, ``rounds`` times each, and the
    median of their medians is kept, so machine drift hits every cell alike."""
    cost = tower_cost(tower)
    start = time.perf_counter()
    exported = export_tower(tower, workdir / "image.onnx", int8=True)
    row = {"params_m": cost["params"] / 1e6, "gmacs": cost["gmacs"],
           "export_s": time.perf_counter() - start, "int8_cos_min": exported.int8_cosine_min}
    base = dataclasses.replace(get_target("local-cpu"), warmup=warmup, runs=runs)
    backend = OnnxRuntimeBackend()
    cells = {}
    for threads in (1, 2):
        for precision in ("fp32", "int8"):
            target = dataclasses.replace(base, intra_op_threads=threads, precision=precision)
            cells[f"ort_{precision}_{threads}t"] = lambda t=target: backend.measure(exported, t).median_ms
        cells[f"eager_{threads}t"] = lambda n=threads: torch_eager_latency(tower, n, 1, warmup, runs).median_ms
    samples: dict[str, list[float]] = {key: [] for key in cells}
    for _ in range(rounds):
        for key, measure in cells.items():
            samples[key].append(measure())
    row.update({key: statistics.median(values) for key, values in samples.items()})
    for threads in (1, 2):
        row[f"eager/ort_{threads}t"] = row[f"eager_{threads}t"] / row[f"ort_fp32_{threads}t"]
    return row


def main(runs: int = 15) -> None:
    warmup = 3
    facts = machine_facts()
    print(f"machine: {facts['processor']} | {facts['cpu_count']} CPUs | {facts['platform']} | "
          f"load average (1 min) at start {os.getloadavg()[0]:.2f}")
    print(f"onnxruntime {facts['onnxruntime']} | torch {facts['torch']} | python {facts['python']}")
    print(f"MACs: {CONVENTION}; input 1x3x224x224")
    print(f"latency: ms per call, batch 1; median over 3 interleaved rounds of the median of {runs} timed calls "
          f"after {warmup} warm-up; "
          "onnxruntime CPUExecutionProvider, inter-op 1; int8 = dynamic quantisation of MatMul/Gemm weights; "
          "eager = torch inference_mode fp32\n")
    cols = [("params_m", "Mparams", "{:.2f}"), ("gmacs", "GMACs", "{:.3f}"), ("export_s", "export s", "{:.1f}"),
            ("ort_fp32_1t", "ort32 1t", "{:.2f}"), ("ort_fp32_2t", "ort32 2t", "{:.2f}"),
            ("ort_int8_1t", "int8 1t", "{:.2f}"), ("ort_int8_2t", "int8 2t", "{:.2f}"),
            ("eager_1t", "eager 1t", "{:.2f}"), ("eager_2t", "eager 2t", "{:.2f}"),
            ("eager/ort_1t", "eag/ort 1t", "{:.2f}"), ("eager/ort_2t", "eag/ort 2t", "{:.2f}"),
            ("int8_cos_min", "int8 cos", "{:.4f}")]
    print(f"{'model':<22}" + "".join(f"{title:>11}" for _, title, _ in cols))
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, tower) in enumerate(image_towers().items()):
            workdir = Path(tmp) / str(i)
            workdir.mkdir()
            row = bench(tower, workdir, warmup, runs)
            print(f"{name:<22}" + "".join(f"{fmt.format(row[key]):>11}" for key, _, fmt in cols), flush=True)
    print(f"\nload average (1 min) at end {os.getloadavg()[0]:.2f} (this benchmark alone adds 1-2 on 2 CPUs; "
          "more means other work shared the CPUs, which hurts the 2-thread cells most)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
