"""int8 variants of an exported ONNX tower, the ways onnxruntime offers to make them.

- ``dynamic``: int8 weights of MatMul/Gemm, activations quantised at run time (no data
  needed). Convolutions stay fp32: onnxruntime's ConvInteger runs slower than fp32 Conv
  on CPU (convnext_atto @224: 22 ms -> 133 ms), and it rejects convolutions whose weights
  are not plain initializers (efficientvit).
- ``static``: int8 weights and activations of MatMul/Gemm/Conv (QDQ format); activation
  ranges come from calibration inputs, corpus images or sentences, never evaluation data.
- ``-per-channel``: one scale per output channel of each weight instead of one per tensor.

Measured on small students on this project's CPU (onnxruntime 1.32, one thread): static
QDQ models ran 2-3x slower than fp32 (the quantise/dequantise pairs cost more than the
int8 arithmetic saves at these sizes), dynamic ones about as fast; which variant pays is a
property of the model and the device, so ``dime-nas verify`` measures them on the target.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

QUANTIZATIONS = ("dynamic", "dynamic-per-channel", "static", "static-per-channel")
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")
# Static: the weight ops. Left to its defaults, onnxruntime also quantises the Add of a text tower's
# causal mask, whose -inf entries give that tensor an infinite scale: the text embeddings came out at
# cosine 0.1-0.4 to fp32's.
STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv")
_TWO_GB = 2 * 1024**3


def quantized_path(fp32_path: str | Path, method: str) -> Path:
    """Where the ``method`` variant of ``<stem>.onnx`` goes: ``<stem>.int8.onnx`` for
    ``dynamic`` (the variant every export makes), else ``<stem>.int8-<method>.onnx``."""
    path = Path(fp32_path)
    suffix = ".int8.onnx" if method == "dynamic" else f".int8-{method}.onnx"
    return path.with_name(path.name.removesuffix(".onnx") + suffix)


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, method: str = "dynamic", *,
                  calibration: Sequence[dict[str, np.ndarray]] | None = None) -> Path:
    """Write the ``method`` int8 variant (one of ``QUANTIZATIONS``) of ``fp32_path`` to ``out_path``.

    Args:
        calibration: static methods: model feeds ({input name: array}) whose activation
            ranges set the scales; a few hundred corpus samples are plenty.

    Raises:
        ValueError: an unknown method, or a static one without calibration feeds.
    """
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    if method not in QUANTIZATIONS:
        raise ValueError(f"unknown quantisation {method!r}; known: {', '.join(QUANTIZATIONS)}")
    static, per_channel = method.startswith("static"), method.endswith("per-channel")
    if static and not calibration:
        raise ValueError(f"{method} quantisation needs calibration inputs")
    source, target = Path(fp32_path).resolve(), Path(out_path).resolve()  # before leaving the cwd
    large = source.stat().st_size > _TWO_GB * 0.95

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds: Iterator[dict[str, np.ndarray]] = iter(calibration or ())

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    with _quiet(), tempfile.TemporaryDirectory(prefix="dime_nas_quant_") as scratch, contextlib.chdir(scratch):
        # onnxruntime writes debug models and calibration files into the working directory:
        # run from a scratch folder so users' folders stay clean
        if static:
            quantize_static(str(source), str(target), _Feeds(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(STATIC_OP_TYPES), use_external_data_format=large)
        else:
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
                             op_types_to_quantize=list(DYNAMIC_OP_TYPES), use_external_data_format=large)
    return Path(out_path)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer logs advice (pre-processing, per-channel) on the root logger: errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
