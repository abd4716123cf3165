"""Every latency backend times the file of the target's precision: an int8 target runs the
quantised model (its int8 operators are in the file onnxruntime loaded), an fp32 target the
fp32 one. The conformance test checks what a backend reports; this checks what it ran."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import pytest

from dime_nas.cost.latency import LATENCY_BACKENDS
from dime_nas.cost.onnx_export import export_tower
from dime_nas.cost.remote import AgentClient
from dime_nas.cost.targets import get_target
from dime_nas.cost.towers import towers_from_student
from dime_nas.student import StudentConfig, TextTowerConfig, VisionTowerConfig

# what onnxruntime's dynamic quantisation puts in place of fp32 matmuls
QUANTISED_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    vision = VisionTowerConfig(kind="vit", image_size=32, layers=1, width=32, heads=2, mlp_ratio=2.0, patch_size=8)
    tower = towers_from_student(StudentConfig(embed_dim=64, vision=vision, text=TextTowerConfig()))["image"]
    return export_tower(tower, tmp_path_factory.mktemp("timed") / "image.onnx", int8=True)


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    from agent_fixtures import loopback_agent

    with loopback_agent(tmp_path_factory.mktemp("timed_agent")) as agent:
        yield agent


def _op_types(model: str | bytes) -> set[str]:
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model, load_external_data=False)
    return {node.op_type for node in proto.graph.node}


def _local_files(monkeypatch) -> list:
    """Records each model handed to an onnxruntime session in this process (a path or bytes)."""
    import onnxruntime as ort

    opened, real = [], ort.InferenceSession

    class Recording(real):
        def __init__(self, model, *args, **kwargs):
            opened.append(model)
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Recording)
    return opened


def _remote_files(monkeypatch, agent) -> list:
    """Records the stored model file each agent measurement ran (the agent's store names it by hash)."""
    timed, real = [], AgentClient.measure

    def recording(self, sha, **kwargs):
        timed.append(str(agent.store / "models" / f"{sha}.onnx"))
        return real(self, sha, **kwargs)

    monkeypatch.setattr(AgentClient, "measure", recording)
    return timed


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("backend", sorted(n for n, b in LATENCY_BACKENDS.items() if b.needs_onnx))
def test_a_backend_times_the_file_of_the_target_precision(backend, precision, exported, request, monkeypatch):
    assert QUANTISED_OPS & _op_types(str(exported.int8_path)) and not QUANTISED_OPS & _op_types(str(exported.path))
    remote = {}
    if backend == "remote":
        agent = request.getfixturevalue("loopback")
        remote = {"options": {"urls": [agent.url], "token_file": str(agent.token_file)}}
        timed = _remote_files(monkeypatch, agent)
    else:
        timed = _local_files(monkeypatch)
    target = dataclasses.replace(get_target("local-cpu"), backend=backend, precision=precision, warmup=1,
                                 runs=3, sessions=1, **remote)
    LATENCY_BACKENDS[backend]().measure(exported, target)
    assert timed, "the backend ran no model"
    want = exported.int8_path if precision == "int8" else exported.path
    for model in timed:
        quantised = bool(QUANTISED_OPS & _op_types(model))
        assert quantised == (precision == "int8"), f"the {precision} target timed {model!r}"
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        assert data == want.read_bytes(), f"the {precision} target timed {model!r}, not {want}"
