"""ONNX export: dynamic batch, dtypes, single file, parity with torch as an error, int8."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dime_nas.cost.onnx_export import ExportParityError, export_tower
from dime_nas.cost.towers import Tower, towers_from_student, tracing_mode
from dime_nas.student import StudentConfig, TextTowerConfig, VisionTowerConfig

TINY = StudentConfig(
    embed_dim=64,
    vision=VisionTowerConfig(kind="vit", image_size=32, layers=2, width=32, heads=2, mlp_ratio=2.0, patch_size=8),
    text=TextTowerConfig(kind="transformer", layers=1, width=32, heads=2, context_length=16, vocab_size=1000),
)


@pytest.fixture(scope="module")
def towers():
    return towers_from_student(TINY)


@pytest.fixture(scope="module")
def exported(towers, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    return {name: export_tower(t, out / f"{name}.onnx", int8=True) for name, t in towers.items()}


def _run(path, name, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]


@pytest.mark.parametrize("name", ["image", "text"])
def test_export_record_and_single_file(exported, name):
    e = exported[name]
    assert e.tower == name and e.path.is_file()
    assert not e.path.with_name(e.path.name + ".data").exists()  # weights inside the .onnx
    assert e.file_bytes == e.path.stat().st_size
    assert e.input_shape[0] == "batch"
    assert e.parity_max_abs_diff <= 1e-4
    assert e.opset == 18 and e.exporter in ("torchscript", "dynamo")
    if name == "image":
        assert e.input_dtype == "float32" and e.input_shape == ("batch", 3, 32, 32)
    else:
        assert e.input_dtype == "int64" and e.input_shape == ("batch", 16)


@pytest.mark.parametrize("name", ["image", "text"])
def test_exported_file_has_dynamic_batch_and_matches_torch(towers, exported, name):
    import onnxruntime as ort

    e, tower = exported[name], towers[name]
    session = ort.InferenceSession(str(e.path), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic, not baked to the traced 2
    x = tower.example_input(5)
    got = _run(e.path, e.input_name, x.numpy())
    with tracing_mode(tower.module) as module:
        ref = module(x).numpy()
    assert got.shape == (5, 64)
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("name", ["image", "text"])
def test_int8_variant(exported, name):
    e = exported[name]
    assert e.int8_path is not None and e.int8_path.is_file() and e.int8_path != e.path
    assert e.int8_file_bytes == e.int8_path.stat().st_size
    assert 0.95 < e.int8_cosine_min <= e.int8_cosine_mean <= 1.0 + 1e-6
    x = e.example_input(3)
    assert _run(e.int8_path, e.input_name, x).shape == (3, 64)


def test_no_int8_unless_asked(towers, tmp_path):
    e = export_tower(towers["image"], tmp_path / "sub" / "image.onnx")
    assert e.int8_path is None and e.int8_cosine_mean is None
    assert e.to_dict()["path"] == str(tmp_path / "sub" / "image.onnx")


class _CallCounter(nn.Module):
    """Python state the tracer bakes in as a constant: the file no longer matches torch."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.proj(x) * float(self.calls)


def test_parity_failure_is_an_error_naming_the_tower(tmp_path):
    tower = Tower("text", _CallCounter(), lambda b: torch.ones(b, 8))
    with pytest.raises(ExportParityError, match="text tower") as info:
        export_tower(tower, tmp_path / "bad.onnx")
    assert info.value.tower == "text" and info.value.max_abs_diff > 1e-4


def test_timm_convnet_exports(tmp_path):
    config = StudentConfig(embed_dim=32, vision=VisionTowerConfig(kind="timm", timm_model="convnext_atto", image_size=64))
    e = export_tower(towers_from_student(config)["image"], tmp_path / "convnext.onnx")
    assert e.parity_max_abs_diff <= 1e-4 and e.input_shape == ("batch", 3, 64, 64)


def test_falls_back_to_dynamo_when_torchscript_fails(towers, tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def torchscript_broken(*args, **kwargs):
        if not kwargs.get("dynamo", True):
            raise RuntimeError("torchscript exporter broke")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", torchscript_broken)
    with pytest.warns(UserWarning, match="torchscript ONNX export failed"):
        e = export_tower(towers["image"], tmp_path / "image.onnx")
    assert e.exporter == "dynamo" and e.parity_max_abs_diff <= 1e-4
    assert not (tmp_path / "image.onnx.data").exists()  # single file from dynamo too
    with pytest.raises(ValueError, match="exporter"):
        export_tower(towers["image"], tmp_path / "x.onnx", exporter="tflite")
