"""Targets, latency statistics, the shared LatencyBackend conformance test, measure_target."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from dime_nas.cost.onnx_export import export_tower
from dime_nas.agent.timing import latency_stats
from dime_nas.cost.backend import LatencyMeasurement
from dime_nas.cost.latency import LATENCY_BACKENDS, measure_target
from dime_nas.cost.local import OnnxRuntimeBackend, torch_eager_latency
from dime_nas.cost.targets import SHIPPED_TARGETS, Target, get_target, load_targets
from dime_nas.errors import ConfigError
from dime_nas.cost.towers import towers_from_student
from dime_nas.student import StudentConfig, TextTowerConfig, VisionTowerConfig


def _vit(layers: int, width: int, heads: int, patch: int, size: int, text: TextTowerConfig | None = None) -> StudentConfig:
    vision = VisionTowerConfig(kind="vit", image_size=size, layers=layers, width=width, heads=heads,
                               mlp_ratio=2.0, patch_size=patch)
    return StudentConfig(embed_dim=64, vision=vision, text=text or TextTowerConfig())


TINY = _vit(1, 32, 2, 8, 32, TextTowerConfig(kind="transformer", layers=1, width=32, heads=2,
                                             context_length=16, vocab_size=1000))


def _quick(name: str, **changes) -> Target:
    return dataclasses.replace(get_target(name), warmup=2, runs=7, **changes)


@pytest.fixture(scope="module")
def towers():
    return towers_from_student(TINY)


@pytest.fixture(scope="module")
def exported(towers, tmp_path_factory):
    return export_tower(towers["image"], tmp_path_factory.mktemp("lat") / "image.onnx", int8=True)


# ---- statistics ---------------------------------------------------------------------------------

def test_latency_stats_on_known_times():
    stats = latency_stats(np.arange(1.0, 11.0))  # 1..10 ms
    assert stats["median_ms"] == 5.5 and stats["mean_ms"] == 5.5
    assert stats["p90_ms"] == pytest.approx(9.1) and stats["p99_ms"] == pytest.approx(9.91)
    assert stats["std_ms"] == pytest.approx(math.sqrt(8.25))
    assert stats["cv"] == pytest.approx(math.sqrt(8.25) / 5.5)
    assert latency_stats([3.0, 3.0, 3.0])["cv"] == 0.0
    # one slow outlier moves the mean and the tail, not the median
    spiky = latency_stats([2.0] * 98 + [50.0, 60.0])
    assert spiky["median_ms"] == 2.0 and spiky["p99_ms"] > 49 and spiky["mean_ms"] > 3


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [-1.0], [[1.0]]])
def test_latency_stats_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        latency_stats(bad)


# ---- targets ------------------------------------------------------------------------------------

def test_shipped_targets():
    targets = load_targets()
    assert {"local-cpu", "local-cpu-int8", "local-cpu-1t", "pi4-int8", "gpu-cuda"} <= set(targets)
    local = targets["local-cpu"]
    assert (local.backend, local.providers, local.intra_op_threads, local.batch_size, local.towers,
            local.precision) == ("onnxruntime", ("CPUExecutionProvider",), 2, 1, ("image",), "fp32")
    assert targets["local-cpu-int8"].precision == "int8" and targets["local-cpu-1t"].intra_op_threads == 1
    pi4 = targets["pi4-int8"]
    assert (pi4.backend, pi4.intra_op_threads, pi4.precision) == ("remote", 4, "int8")
    assert pi4.options.urls and pi4.options.token_env == "DIME_NAS_PI4_TOKEN"
    assert "Cortex-A72" in pi4.description
    assert targets["gpu-cuda"].providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_a_targets_file_of_ones_own_replaces_the_shipped_ones(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("board:\n  description: my board\n  intra_op_threads: 3\n  runs: 9\n")
    mine = load_targets(path)
    assert list(mine) == ["board"] and (mine["board"].intra_op_threads, mine["board"].runs) == (3, 9)
    assert mine["board"].providers == ("CPUExecutionProvider",)  # unset fields take the documented defaults
    assert "board" not in load_targets(SHIPPED_TARGETS)


def test_unknown_key_names_key_target_and_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("board:\n  description: x\n  threads: 4\n")
    with pytest.raises(ValueError, match=r"mine\.yaml.*'board'.*threads"):
        load_targets(path)


@pytest.mark.parametrize("field, value", [("precision", "fp16"), ("towers", ["audio"]), ("runs", 0),
                                          ("backend", "tflite"), ("providers", []),
                                          ("sessions", 0), ("sessions", 51)])
def test_invalid_values_are_errors(tmp_path, field, value):
    path = tmp_path / "t.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"board": {"description": "x", field: value}}))
    with pytest.raises(ValueError, match=rf"t\.yaml.*board.*{field}"):
        load_targets(path)


def test_get_target_suggests_close_names():
    from dime_nas.errors import ConfigError

    with pytest.raises(ConfigError, match="local-cpu"):
        get_target("local-cpu-2t")


def test_unknown_target_on_the_command_line_exits_2_naming_it_and_the_known_ones(capsys):
    from dime_nas.cli import main

    assert main(["latency", "ViT-B-32", "--target", "nowhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown target 'nowhere'" in err and len(err.splitlines()) == 1
    assert "known: " + ", ".join(load_targets()) in err


def test_a_bad_targets_file_on_the_command_line_exits_2_naming_file_and_target(tmp_path, capsys):
    from dime_nas.cli import main

    path = tmp_path / "boards.yaml"
    path.write_text("board:\n  description: x\n  runs: 0\n")
    assert main(["targets", "--file", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and "'board'" in err and "runs must be a positive integer" in err
    assert len(err.splitlines()) == 1


# ---- the shared conformance test every backend runs ----------------------------------------------

def _check_conformance(m: LatencyMeasurement, target: Target) -> None:
    stats = [m.median_ms, m.p90_ms, m.p99_ms, m.mean_ms]
    assert all(math.isfinite(s) and s > 0 for s in stats)
    assert m.p99_ms >= m.p90_ms >= m.median_ms
    assert m.std_ms >= 0 and m.cv >= 0 and math.isfinite(m.cv)
    assert (m.runs, m.warmup, m.batch, m.threads) == (target.runs, target.warmup, target.batch_size,
                                                       target.intra_op_threads)
    assert m.precision == target.precision and m.target == target.name
    assert m.providers and all(isinstance(p, str) for p in m.providers)
    assert {"platform", "processor", "cpu_count", "onnxruntime", "torch"} <= set(m.machine)


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    """A measurement agent on loopback, for the remote backend (started only if that backend is tested)."""
    from agent_fixtures import loopback_agent

    with loopback_agent(tmp_path_factory.mktemp("conformance_agent")) as agent:
        yield agent


def _conformance_target(backend: str, precision: str, request) -> Target | None:
    """A quick target of ``backend`` at ``precision`` (None: the backend does not measure it)."""
    options = None
    if backend == "remote":  # a backend with options: how the test reaches it
        agent = request.getfixturevalue("loopback")
        options = {"urls": [agent.url], "token_file": str(agent.token_file)}
    for sessions in (3, 1):  # a backend without sessions (torch eager) refuses 3
        try:
            return _quick("local-cpu", backend=backend, precision=precision, batch_size=2, sessions=sessions,
                          options=options)
        except ConfigError:
            continue
    return None


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("backend", sorted(LATENCY_BACKENDS))
def test_backend_conformance(backend, precision, towers, exported, request, monkeypatch):
    import onnxruntime as ort

    calls = []  # what the local backend really ran, not what it reports
    real_run = ort.InferenceSession.run

    def counting_run(self, output_names, feed, *args, **kwargs):
        calls.append({k: v.shape[0] for k, v in feed.items()})
        return real_run(self, output_names, feed, *args, **kwargs)

    if backend != "remote":
        monkeypatch.setattr(ort.InferenceSession, "run", counting_run)
    target = _conformance_target(backend, precision, request)
    if target is None:
        pytest.skip(f"backend {backend} does not measure {precision}")
    cls = LATENCY_BACKENDS[backend]
    assert cls.name == backend
    m = cls().measure(exported if cls.needs_onnx else towers["image"], target)
    _check_conformance(m, target)
    assert m.tower == "image" and m.backend == backend
    if backend == "onnxruntime":
        assert len(calls) == target.sessions * target.warmup + target.runs
        assert all(b == {exported.input_name: 2} for b in calls)
    assert m.sessions == target.sessions and len(m.session_medians_ms) == target.sessions


def test_one_slow_session_does_not_move_the_median(monkeypatch):
    """A session that runs 5x slower (as one now and then does on a shared machine) is outvoted."""
    from dime_nas.agent import timing

    per_session = iter([1.0, 5.0, 1.1])
    opened = []
    monkeypatch.setattr(timing, "timed_calls", lambda call, warmup, n: [next(per_session)] * n)
    stats = timing.timed_sessions(lambda: opened.append(1), warmup=3, runs=50, sessions=3)
    assert len(opened) == 3  # a fresh session each
    assert stats["median_ms"] == 1.1 and stats["session_medians_ms"] == [1.0, 5.0, 1.1]
    assert stats["runs"] == 50 and stats["p90_ms"] == 5.0  # the spread still shows the slow session
    monkeypatch.setattr(timing, "timed_calls", lambda call, warmup, n: [1.0, 1.0, 5.0, 5.0])
    assert timing.timed_sessions(lambda: None, warmup=0, runs=4, sessions=1)["median_ms"] == 3.0  # plain median
    with pytest.raises(ValueError, match="sessions"):
        timing.timed_sessions(lambda: None, warmup=0, runs=2, sessions=3)


def test_torch_eager_meets_the_same_contract(towers):
    target = _quick("local-torch", intra_op_threads=1)
    threads = torch.get_num_threads()
    m = torch_eager_latency(towers["image"], threads=1, batch=1, warmup=2, runs=7, target=target.name)
    _check_conformance(m, target)
    assert torch.get_num_threads() == threads  # restored


def test_a_target_whose_provider_is_missing_is_refused_not_run_on_the_cpu(exported, tmp_path):
    import onnxruntime as ort

    from dime_nas.config import load_experiment
    from dime_nas.cost.latency import check_target_usable
    from dime_nas.errors import ConfigError

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA's provider is available here: nothing to refuse")
    gpu = _quick("gpu-cuda")
    problem = check_target_usable(gpu)
    assert "CUDAExecutionProvider" in problem and "onnxruntime-gpu" in problem
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        OnnxRuntimeBackend().measure(exported, gpu)
    exp = tmp_path / "exp.yaml"  # an experiment on that target is refused before it runs, naming the key
    exp.write_text(f"name: g\nteacher: {{model: RN50, pretrained: openai}}\ndata: {{images: {tmp_path}, sentences: {exp}}}\n"
                   "eval: {shapes: {}}\nspace: tiny\ntarget: gpu-cuda\n")
    from dime_nas import api

    with pytest.raises(ConfigError, match="CUDAExecutionProvider") as info:
        api.preflight(load_experiment(exp))
    assert "target" in str(info.value)
    from dime_nas.cli import main  # a search runs the preflight before it makes anything

    assert main(["search", str(exp), "--quiet", "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_a_cpu_target_is_usable_and_records_the_providers_that_ran(exported):
    from dime_nas.cost.latency import check_target_usable

    assert check_target_usable(_quick("local-cpu")) is None
    assert OnnxRuntimeBackend().measure(exported, _quick("local-cpu")).providers == ["CPUExecutionProvider"]


def test_int8_target_needs_int8_export(towers, tmp_path):
    fp32_only = export_tower(towers["image"], tmp_path / "image.onnx")
    with pytest.raises(ValueError, match="int8"):
        OnnxRuntimeBackend().measure(fp32_only, _quick("local-cpu-int8"))


def test_bigger_model_measures_slower(tmp_path):
    # ~250x the MACs: far beyond the 20-40% run-to-run noise of this machine
    small = towers_from_student(_vit(1, 32, 2, 16, 32))["image"]
    big = towers_from_student(_vit(4, 256, 4, 16, 160))["image"]
    target = dataclasses.replace(get_target("local-cpu"), warmup=3, runs=15)
    backend = OnnxRuntimeBackend()
    t_small = backend.measure(export_tower(small, tmp_path / "small.onnx"), target).median_ms
    t_big = backend.measure(export_tower(big, tmp_path / "big.onnx"), target).median_ms
    assert t_big > 3 * t_small


# ---- measure_target --------------------------------------------------------------------------------

def test_measure_target_sums_counted_towers(towers, tmp_path):
    target = _quick("local-cpu-both")
    result = measure_target(towers, target, tmp_path)
    assert set(result["towers"]) == {"image", "text"}
    for stat in ("median", "p10", "p90"):  # each total is the sum over the towers counted
        assert result[f"total_{stat}_ms"] == pytest.approx(sum(r["latency"][f"{stat}_ms"]
                                                               for r in result["towers"].values()))
    assert (tmp_path / "image.onnx").is_file() and (tmp_path / "text.onnx").is_file()
    assert all(r["export"]["path"].endswith(f"{name}.onnx") for name, r in result["towers"].items())
    assert result["target"]["name"] == "local-cpu-both"
    assert result["convention"].endswith("total = sum of tower medians")
    image_only = measure_target(towers, _quick("local-cpu"), tmp_path / "b")
    assert set(image_only["towers"]) == {"image"}


def test_measure_target_torch_backend_skips_export(towers, tmp_path):
    result = measure_target(towers, _quick("local-torch", towers=("image", "text")), tmp_path)
    assert set(result["towers"]) == {"image", "text"}  # every tower counted is timed, not only the first
    for tower in result["towers"].values():
        assert tower["export"] is None and tower["latency"]["backend"] == "torch"
    assert not list(tmp_path.iterdir())


def test_a_kept_export_is_timed_again_not_exported_again(towers, tmp_path, monkeypatch):
    from dime_nas.cost import onnx_export

    kept: dict = {}
    first = measure_target(towers, _quick("local-cpu"), tmp_path, kept)
    assert set(kept) == {"image"}

    def no_export(*args, **kwargs):
        raise AssertionError("a kept export was exported again")

    monkeypatch.setattr(onnx_export, "export_tower", no_export)
    again = measure_target(towers, _quick("local-cpu"), tmp_path, kept)
    assert again["towers"]["image"]["export"] == first["towers"]["image"]["export"]


def test_an_unknown_backend_lists_the_known_ones():
    from dime_nas.cost.latency import backend_class

    with pytest.raises(ConfigError, match=f"backend must be one of {', '.join(LATENCY_BACKENDS)}, got 'onnx'"):
        backend_class("onnx")


def test_measure_target_errors(tmp_path, monkeypatch):
    image_only = towers_from_student(_vit(1, 32, 2, 8, 32))
    with pytest.raises(ValueError, match="text"):
        measure_target(image_only, _quick("local-cpu-both"), tmp_path)
    monkeypatch.delenv("DIME_NAS_PI4_TOKEN", raising=False)
    with pytest.raises(RuntimeError, match="DIME_NAS_PI4_TOKEN"):  # the shipped board needs its token
        measure_target(image_only, _quick("pi4-int8"), tmp_path)
