"""Export one tower to ONNX for cost measurement, check it, and prove it computes what torch computes.

The TorchScript exporter is used first: it exports a tiny student in well under a
second where the dynamo exporter takes several, and every latency-measuring trial
exports. If it fails, the dynamo exporter is tried. Both are traced at batch 2 with a
dynamic batch axis (a batch-1 example can bake the batch size in), then the file is
run by onnxruntime at batch 1 and 3 and compared with torch.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dime_nas.cost.towers import Tower, tracing_mode

DEFAULT_OPSET = 18
PARITY_ATOL = 1e-4
_TWO_GB = 2 * 1024**3


class ExportParityError(RuntimeError):
    """The ONNX file's outputs differ from torch's by more than the tolerance."""

    def __init__(self, tower: str, max_abs_diff: float, atol: float, batch: int) -> None:
        super().__init__(f"{tower} tower: ONNX output differs from torch by {max_abs_diff:.3g} "
                         f"(max abs, batch {batch}) > tolerance {atol:g}")
        self.tower, self.max_abs_diff, self.atol, self.batch = tower, max_abs_diff, atol, batch


@dataclass
class ExportedTower:
    """An ONNX file of one tower, checked and parity-tested.

    ``input_shape`` names the dynamic axis ("batch"); ``int8_*`` are set when a
    dynamically quantised variant was made (``dime_nas.quantize``: int8 weights of MatMul/Gemm;
    cosines compare its outputs with fp32's over a batch of 8).
    """

    tower: str
    path: Path
    input_name: str
    input_dtype: str  # numpy dtype name: "float32" (images) or "int64" (token ids)
    input_shape: tuple[int | str, ...]
    output_name: str
    opset: int
    exporter: str  # "torchscript" or "dynamo"
    parity_max_abs_diff: float  # max over batch 1 and batch 3
    file_bytes: int
    export_seconds: float
    int8_path: Path | None = None
    int8_file_bytes: int | None = None
    int8_cosine_mean: float | None = None
    int8_cosine_min: float | None = None

    def path_for(self, target: Any) -> Path:
        """The file a target times: the int8 variant for an int8 target, else fp32."""
        if target.precision != "int8":
            return self.path
        if self.int8_path is None:
            raise ValueError(f"target {target.name!r} is int8 but the {self.tower} tower has no int8 export")
        return self.int8_path

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["int8_path"] = str(self.int8_path) if self.int8_path else None
        out["input_shape"] = list(self.input_shape)
        return out

    def example_input(self, batch: int, seed: int = 0) -> np.ndarray:
        """A fixed input of this file's shape and dtype at ``batch`` (for runtimes without torch)."""
        shape = [batch if isinstance(d, str) else d for d in self.input_shape]
        rng = np.random.default_rng(seed)
        if self.input_dtype == "int64":
            return rng.integers(1, 256, size=shape, dtype=np.int64)  # valid ids in any vocabulary
        return rng.standard_normal(shape).astype(self.input_dtype)


def export_tower(tower: Tower, path: str | Path, *, opset: int = DEFAULT_OPSET, int8: bool = False,
                 atol: float = PARITY_ATOL, exporter: str = "auto") -> ExportedTower:
    """Export ``tower`` to ``path`` (.onnx), check it, and test parity with torch.

    Args:
        tower: the tower to export.
        path: the .onnx file to write (its folder is created).
        opset: ONNX opset.
        int8: also write ``<stem>.int8.onnx`` (onnxruntime dynamic quantisation: int8
            weights of MatMul/Gemm, activations quantised at run time).
        atol: largest allowed max-abs difference between onnxruntime and torch outputs.
        exporter: "torchscript", "dynamo", or "auto" (torchscript, then dynamo on failure).

    Raises:
        ExportParityError: onnxruntime and torch disagree by more than ``atol``.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    input_name, output_name = ("image" if tower.name == "image" else "text"), "embedding"
    large = sum(p.numel() * p.element_size() for p in tower.module.parameters()) > _TWO_GB * 0.95
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    if large:
        order = ["dynamo"]  # writes <name>.onnx.data; the TorchScript path cannot exceed 2 GB
    start = time.perf_counter()
    for i, used in enumerate(order):
        try:
            _export(tower, path, used, opset, input_name, output_name, large)
            break
        except Exception as err:
            if i == len(order) - 1:
                raise
            warnings.warn(f"{tower.name} tower: {used} ONNX export failed ({err!r}); trying {order[i + 1]}",
                          stacklevel=2)
    seconds = time.perf_counter() - start
    onnx.checker.check_model(str(path))  # by path: works for external data too

    session = _session(path)
    diff = 0.0
    for batch in (1, 3):  # 1 and 3: neither equals the traced batch of 2
        x = tower.example_input(batch)
        ref = _torch_out(tower, x)
        got = session.run(None, {input_name: x.numpy()})[0]
        batch_diff = float(np.max(np.abs(got - ref))) if got.shape == ref.shape else float("inf")
        if not batch_diff <= atol:  # also catches NaN and shape mismatch
            raise ExportParityError(tower.name, batch_diff, atol, batch)
        diff = max(diff, batch_diff)

    x1 = tower.example_input(1)
    exported = ExportedTower(
        tower=tower.name, path=path, input_name=input_name,
        input_dtype=str(x1.numpy().dtype), input_shape=("batch", *x1.shape[1:]),
        output_name=output_name, opset=opset, exporter=used, parity_max_abs_diff=diff,
        file_bytes=_file_bytes(path), export_seconds=seconds,
    )
    if int8:
        _add_int8(exported, tower)
    return exported


def _export(tower: Tower, path: Path, exporter: str, opset: int, input_name: str,
            output_name: str, large: bool) -> None:
    x = tower.example_input(2)
    with tracing_mode(tower.module) as module, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer notes
        if exporter == "torchscript":
            torch.onnx.export(module, (x,), str(path), input_names=[input_name], output_names=[output_name],
                              opset_version=opset, dynamo=False, do_constant_folding=True,
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
        else:
            torch.onnx.export(module, (x,), str(path), input_names=[input_name], output_names=[output_name],
                              opset_version=opset, dynamo=True, external_data=large, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},))


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _torch_out(tower: Tower, x: torch.Tensor) -> np.ndarray:
    with tracing_mode(tower.module) as module:
        return module(x).float().numpy()


def _file_bytes(path: Path) -> int:
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _add_int8(exported: ExportedTower, tower: Tower, batch: int = 8) -> None:
    """Write the int8 variant and record how close its outputs stay to fp32's."""
    from dime_nas.quantize import quantize_onnx, quantized_path

    int8_path = quantize_onnx(exported.path, quantized_path(exported.path, "dynamic"), "dynamic")
    x = tower.example_input(batch).numpy()
    fp32 = _session(exported.path).run(None, {exported.input_name: x})[0]
    q = _session(int8_path).run(None, {exported.input_name: x})[0]
    cos = np.sum(fp32 * q, axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(q, axis=1) + 1e-12)
    exported.int8_path = int8_path
    exported.int8_file_bytes = _file_bytes(int8_path)
    exported.int8_cosine_mean = float(cos.mean())
    exported.int8_cosine_min = float(cos.min())
