"""`dime-nas verify`: what ships, measured as it ships (accuracy through onnxruntime on the test
split, latency per precision with intervals, the precision to ship, budget verdicts)."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from agent_fixtures import loopback_agent
from conftest import write_experiment
from dime_nas import api
from dime_nas.cli import main
from dime_nas.config import load_experiment
from dime_nas.metrics import Budget
from dime_nas.cost.targets import get_target
from dime_nas.errors import ConfigError
from dime_nas.quantize import QUANTIZATIONS, quantize_onnx, quantized_path
from dime_nas.search.stats import sum_of_medians_interval
from dime_nas.verify import (budget_verdict, choose_precision, paired_ratio, representative_int8,
                             verify_export)

# the tiny ShapesWorld teacher's image tower (conftest.tiny_shapes_teacher_config), as a student:
# its accuracy is the teacher's, far above chance, so a broken int8 file shows as a drop
TEACHER_AS_STUDENT = {"embed_dim": 64, "vision": {"kind": "vit", "image_size": 32, "layers": 1, "width": 64,
                                                  "heads": 1, "mlp_ratio": 4.0, "patch_size": 8},
                      "text": {"kind": "teacher"}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_shapes_teacher):
    """(experiment config, export folder) of the teacher-as-student, exported outside any run folder."""
    from dime_nas.deliverable import export_student
    from dime_nas.distill.trainer import StudentTowers
    from dime_nas.student import StudentConfig
    from dime_nas.teacher import TeacherSpec, load_teacher

    root = tmp_path_factory.mktemp("verify")
    _, teacher_dir = tiny_shapes_teacher
    path = write_experiment(root, teacher_dir, extra="deliverable: {latency_rounds: 2, calibration_samples: 32}")
    path.write_text(path.read_text().replace("n_per_class: 2", "n_per_class: 12"))
    config = load_experiment(path)
    cache = api.build_cache(config, progress=False)
    teacher = load_teacher(TeacherSpec(checkpoint=str(teacher_dir)))
    student = StudentConfig.from_dict(TEACHER_AS_STUDENT)
    towers = StudentTowers(student)
    towers.visual.load_state_dict(teacher.model.visual.state_dict())
    out = root / "export"
    export_student(student, towers, out, preprocess_cfg=cache.manifest["preprocess"], teacher=teacher)
    return config, out


def test_onnx_accuracy_matches_the_checkpoint_and_the_card_says_what_was_verified(exported):
    config, out = exported
    config = dataclasses.replace(config, deliverable=dataclasses.replace(config.deliverable,
                                                                         quantization=["dynamic", "static"]))
    target = get_target("fast-cpu", config.targets_file)
    v = verify_export(out, config, target, [Budget.parse("latency_ms <= 1000")], progress=False)
    assert set(v["variants"]) == {"fp32", "dynamic", "static"}
    assert (out / "image.int8-static.onnx").is_file() and (out / "text.int8-static.onnx").is_file()
    fp32, checkpoint = v["variants"]["fp32"]["accuracy"], v["torch"]["accuracy"]
    assert fp32 > 0.3  # the teacher's tower: far above chance, so the parity below means something
    assert abs(fp32 - checkpoint) <= 0.005  # within 0.5 points
    for variant in v["variants"].values():  # every file of every precision timed, with an interval
        for tower in ("image", "text"):
            lat = variant["latency"][tower]
            assert lat["interval_ms"][0] <= lat["median_ms"] <= lat["interval_ms"][1]
            assert len(lat["session_medians_ms"]) == 2 and lat["runs"] == 10
        assert variant["total_median_ms"] == variant["latency"]["image"]["median_ms"]  # the target counts the image
    assert v["budgets"][0]["passes"] and v["passes"] and v["device"]["cpu_count"] >= 1
    card = json.loads((out / "model_card.json").read_text())
    assert card["verified"]["target"] == "fast-cpu" and card["shipped"] == v["shipped"]
    readme = (out / "README.md").read_text()
    assert "## Verified on fast-cpu" in readme and "**(shipped)**" in readme and "budget met" in readme
    assert json.loads((out / "verification.json").read_text())["shipped"] == v["shipped"]


def test_a_broken_int8_file_shows_as_an_accuracy_drop_and_auto_ships_fp32(exported, tmp_path):
    config, out = exported
    broken = tmp_path / "export"
    import shutil

    shutil.copytree(out, broken)
    model = onnx.load(str(broken / "image.int8.onnx"))
    zeroed = 0
    for init in model.graph.initializer:  # the quantised weights: int8 tensors
        if init.data_type == onnx.TensorProto.INT8:
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
            zeroed += 1
    assert zeroed
    onnx.save(model, str(broken / "image.int8.onnx"))
    config = dataclasses.replace(config, deliverable=dataclasses.replace(config.deliverable, quantization=["dynamic"]))
    v = verify_export(broken, config, get_target("fast-cpu", config.targets_file), [], precision="auto",
                      progress=False)
    assert v["int8"] == "dynamic" and v["int8_drop"] > 0.2
    assert v["shipped"]["variant"] == "fp32" and "loses too much accuracy" in v["shipped"]["reason"]
    assert "loses too much accuracy" in (broken / "README.md").read_text()
    forced = verify_export(broken, config, get_target("fast-cpu", config.targets_file), [], precision="int8",
                           progress=False)
    assert forced["shipped"]["variant"] == "dynamic"


# Largest ratio of verify's remote median to the bracketing local median that counts as agreement
# (see the test's docstring for how it was chosen).
REMOTE_TOLERANCE = 2.0


def image_chain(path, layers: int, dim: int = 512) -> None:
    """An image tower stand-in: [batch, 3, 32, 32] as 48 tokens of 64 values, ``layers`` MatMul+Relu
    of width ``dim``, mean over tokens, MatMul to the 64-wide embedding. Its time grows with ``layers``."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(layers)
    weight = lambda name, rows, cols: numpy_helper.from_array(  # noqa: E731
        (rng.standard_normal((rows, cols)) / rows**0.5).astype(np.float32), name)
    inits = [numpy_helper.from_array(np.array([-1, 48, 64], np.int64), "tokens_shape"),
             weight("w_in", 64, dim), weight("w_out", dim, 64)]
    nodes = [helper.make_node("Reshape", ["image", "tokens_shape"], ["tokens"]),
             helper.make_node("MatMul", ["tokens", "w_in"], ["h"])]
    x = "h"
    for i in range(layers):
        inits.append(weight(f"w{i}", dim, dim))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        x = f"r{i}"
    nodes += [helper.make_node("ReduceMean", [x], ["pooled"], axes=[1], keepdims=0),
              helper.make_node("MatMul", ["pooled", "w_out"], ["embedding"])]
    graph = helper.make_graph(nodes, "image_chain",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 64])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def timing_export(exported, tmp_path_factory):
    """(config, export folder): the export with image files whose times differ far beyond the noise.

    ``image.onnx`` is an 8-layer chain (3-7 ms on one loaded thread here) and ``image.int8.onnx`` a
    quantised 1-layer one (~0.3 ms); the text tower's files take ~0.2 ms. So timing one file in place of
    another moves its latency 10-20x (accuracy is not at stake: these towers are untrained stand-ins)."""
    import shutil

    config, source = exported
    out = tmp_path_factory.mktemp("timing") / "export"
    shutil.copytree(source, out)
    image_chain(out / "image.onnx", layers=8)
    image_chain(out / "light.onnx", layers=1)
    quantize_onnx(out / "light.onnx", out / "image.int8.onnx", "dynamic")
    (out / "light.onnx").unlink()
    return dataclasses.replace(config, deliverable=dataclasses.replace(
        config.deliverable, quantization=["dynamic"], latency_rounds=3)), out


def time_locally(files: set[str], out, target) -> dict[str, list[float]]:
    """{file name: session medians} of each file timed on its own by the local onnxruntime backend
    (not through verify: the reference must not share the code under test)."""
    from dime_nas.cost.latency import OnnxRuntimeBackend
    from dime_nas.cost.onnx_export import ExportedTower
    from dime_nas.verify import onnx_input

    medians = {}
    for name in files:
        input_name, dtype, shape, output = onnx_input(out / name)
        exported = ExportedTower(tower="image", path=out / name, input_name=input_name, input_dtype=dtype.name,
                                 input_shape=tuple(shape), output_name=output, opset=0, exporter="file",
                                 parity_max_abs_diff=0.0, file_bytes=0, export_seconds=0.0)
        medians[name] = OnnxRuntimeBackend().measure(exported, target).session_medians_ms
    return medians


def ratio_of_medians(a, b, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """median(a) / median(b) and its 95% percentile-bootstrap interval (a and b resampled apart)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    boot = (np.median(a[rng.integers(0, len(a), (n_boot, len(a)))], axis=1)
            / np.median(b[rng.integers(0, len(b), (n_boot, len(b)))], axis=1))
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(np.median(a) / np.median(b)), float(lo), float(hi)


def remote_vs_local(config, out, reference, measured) -> tuple[dict[str, tuple[float, float, float]], dict]:
    """({file: (ratio, lo, hi)}, the verification): verify's medians on target ``measured`` over a
    local measurement of the same files just before and just after it (load drift moves both)."""
    files = {"image.onnx", "image.int8.onnx", "text.onnx", "text.int8.onnx"}
    before = time_locally(files, out, reference)
    v = verify_export(out, config, measured, [], progress=False)
    after = time_locally(files, out, reference)
    got = {variant["files"][tower]: lat for variant in v["variants"].values()
           for tower, lat in variant["latency"].items()}
    assert set(got) == files
    return {name: ratio_of_medians(got[name]["session_medians_ms"], before[name] + after[name])
            for name in sorted(files)}, v


def test_verify_through_the_agent_agrees_with_a_local_measurement(timing_export, tmp_path):
    """verify's latencies through an agent on loopback agree with a local onnxruntime measurement.

    Each of the four files is compared on its own: the ratio of verify's median (3 rounds x 3 sessions,
    through the agent) to the median of 6 local session medians taken just before and just after verify
    (bracketing, so load drift moves both), with a 95% bootstrap interval of that ratio. They agree
    unless the whole interval lies beyond a factor of REMOTE_TOLERANCE (2.0) either way.

    The tolerance comes from the noise of this same design, measured on the project's 2-core machine
    while other benchmarks ran (load average 9.2-10.2): 20 repeats through the agent and 20 with the
    agent replaced by the local backend, 4 files each. Point ratios ranged 0.42-1.52 through the agent
    and 0.56-1.71 local/local (an 8-layer file read 3.1-7.5 ms), so point ratios alone would need a
    factor ~2.4; the intervals absorb most of that: the smallest tolerance every interval met was 1.31
    through the agent and 1.09 local/local. 2.0 is 1.5x the worst of those, and stays far below the
    10-20x that timing the wrong file gives here (tested: the remote backend timing the fp32 file for
    int8 fails on image.int8.onnx). A run takes 9-20 s at that load.
    """
    config, out = timing_export
    settings = {"backend": "onnxruntime", "intra_op_threads": 1, "warmup": 5, "runs": 30, "sessions": 3}
    with loopback_agent(tmp_path / "agent") as agent:
        targets = {"here": {"description": "this machine", **settings},
                   "board": {"description": "the agent on loopback", **settings, "backend": "remote",
                             "options": {"url": agent.url, "token_file": str(agent.token_file)}}}
        (tmp_path / "targets.yaml").write_text(yaml.safe_dump(targets))
        here, board = (get_target(name, tmp_path / "targets.yaml") for name in ("here", "board"))
        ratios, v = remote_vs_local(config, out, here, board)
    assert v["device"]["agent"] == agent.url
    assert {lat["backend"] for variant in v["variants"].values() for lat in variant["latency"].values()} == {"remote"}
    shown = {name: f"{r:.2f} [{lo:.2f}-{hi:.2f}]" for name, (r, lo, hi) in ratios.items()}
    for name, (_, lo, hi) in ratios.items():
        assert lo <= REMOTE_TOLERANCE and hi >= 1 / REMOTE_TOLERANCE, (name, shown)


def test_the_readme_code_runs_from_the_export_folder(exported, monkeypatch):
    _, out = exported
    readme = (out / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) == 2 and "create_model_and_transforms" in blocks[0] and "InferenceSession" in blocks[1]
    monkeypatch.chdir(out)
    scope: dict = {}
    exec(blocks[0], scope)
    assert scope["probs"].shape == (1, 2)
    exec(blocks[1], scope)
    assert scope["image_embedding"].shape == (1, 64) and scope["text_embedding"].shape == (1, 64)


def test_verify_refuses_what_it_cannot_verify(exported, tmp_path, capsys):
    config, out = exported
    with pytest.raises(FileNotFoundError, match="no model card"):
        verify_export(tmp_path, config, get_target("fast-cpu", config.targets_file), [])
    (tmp_path / "model_card.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        verify_export(tmp_path, config, get_target("fast-cpu", config.targets_file), [])
    with pytest.raises(ConfigError, match="times torch modules"):
        verify_export(out, config, get_target("local-torch"), [])
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
    assert "not inside a dime-nas run directory" in capsys.readouterr().err


def test_precision_choice_rules():
    def variant(accuracy, ratio, lo, hi, precision="int8"):
        return {"precision": precision, "accuracy": accuracy, "total_median_ms": ratio,
                "time_vs_fp32": {"ratio": ratio, "interval": [lo, hi]}}

    fp32 = variant(0.80, 1.0, 1.0, 1.0, "fp32")
    faster_close = {"fp32": fp32, "dynamic": variant(0.795, 0.5, 0.48, 0.52)}
    assert choose_precision("auto", faster_close, "dynamic", "accuracy", 0.01, "t")[0] == "dynamic"
    not_clearly_faster = {"fp32": fp32, "dynamic": variant(0.80, 0.97, 0.90, 1.02)}
    ship, why = choose_precision("auto", not_clearly_faster, "dynamic", "accuracy", 0.01, "t")
    assert ship == "fp32" and "not faster beyond the timing noise" in why and "0.97x" in why
    slower = {"fp32": fp32, "dynamic": variant(0.80, 1.5, 1.2, 1.7)}
    assert "int8 is slower" in choose_precision("auto", slower, "dynamic", "accuracy", 0.01, "t")[1]
    lossy = {"fp32": fp32, "dynamic": variant(0.78, 0.5, 0.48, 0.52)}
    ship, why = choose_precision("auto", lossy, "dynamic", "accuracy", 0.01, "t")
    assert ship == "fp32" and "-2.0 points" in why
    assert choose_precision("int8", lossy, "dynamic", "accuracy", 0.01, "t")[0] == "dynamic"
    assert choose_precision("fp32", faster_close, "dynamic", "accuracy", 0.01, "t")[0] == "fp32"
    with pytest.raises(ConfigError, match="no int8 variant"):
        choose_precision("int8", {"fp32": fp32}, None, "accuracy", 0.01, "t")
    # the int8 variant that stands for int8: the fastest within the tolerance, else the most accurate
    both = {"fp32": fp32, "a": variant(0.80, 0.7, 0.6, 0.8), "b": variant(0.795, 0.5, 0.4, 0.6),
            "c": variant(0.70, 0.1, 0.1, 0.1)}
    assert representative_int8(both, "accuracy", 0.01) == "b"
    assert representative_int8({"fp32": fp32, "c": both["c"], "d": variant(0.75, 0.9, 0.8, 1.0)}, "accuracy",
                               0.01) == "d"


def test_paired_ratio_cancels_a_machine_that_slows_down_between_rounds():
    from dime_nas.cost.targets import Target

    target = Target(name="t", description="t", towers=("image",))
    drift = np.array([1.0, 1.0, 2.0, 2.0, 3.0, 3.0])  # each round slower than the last
    fp32 = {"image": {"session_medians_ms": list(drift)}}
    int8 = {"image": {"session_medians_ms": list(0.8 * drift)}}
    r = paired_ratio(int8, fp32, target)
    assert r["ratio"] == pytest.approx(0.8) and r["interval"][1] < 1.0 and r["pairs"] == 6
    lo, hi = sum_of_medians_interval([list(0.8 * drift)])
    assert hi > 1.0  # unpaired, the int8 interval overlaps fp32's median: the drift hides the gain


def test_budget_verdicts_say_the_margin_and_whether_it_holds_beyond_the_noise():
    b = Budget.parse("latency_ms <= 1")
    clear = budget_verdict(b, 0.8, [0.75, 0.85])
    assert clear["passes"] and clear["beyond_noise"] and clear["margin"] == pytest.approx(0.2)
    close = budget_verdict(b, 0.98, [0.9, 1.05])
    assert close["passes"] and not close["beyond_noise"] and "within the timing noise" in close["text"]
    over = budget_verdict(b, 1.2, [1.1, 1.3])
    assert not over["passes"] and over["beyond_noise"] and over["margin"] == pytest.approx(-0.2)
    assert not budget_verdict(Budget.parse("accuracy >= 0.5"), float("nan"))["passes"]


def test_summed_median_interval_covers_the_median_and_narrows_with_more_sessions():
    rng = np.random.default_rng(0)
    few, many = rng.normal(1.0, 0.1, 5), rng.normal(1.0, 0.1, 200)
    lo, hi = sum_of_medians_interval([few])
    assert lo <= np.median(few) <= hi
    lo2, hi2 = sum_of_medians_interval([many])
    assert hi2 - lo2 < hi - lo
    lo3, hi3 = sum_of_medians_interval([many, many + 1.0])
    assert lo3 <= 2 * np.median(many) + 1.0 <= hi3
    with pytest.raises(ValueError):
        sum_of_medians_interval([[]])


@pytest.mark.parametrize("tower_name", ["image", "text"])
def test_every_quantisation_writes_a_file_that_runs_close_to_fp32(tmp_path, tower_name):
    # the text tower holds a causal mask of -inf: quantising its Add once gave cosines of 0.1-0.4
    import onnxruntime as ort

    from conftest import make_tiny_clip
    from dime_nas.cost.onnx_export import export_tower
    from dime_nas.cost.towers import towers_from_open_clip

    tower = towers_from_open_clip(make_tiny_clip()[0].eval())[tower_name]
    fp32 = export_tower(tower, tmp_path / f"{tower_name}.onnx").path
    calibration = [{tower_name: tower.example_input(8).numpy()} for _ in range(2)]
    x = tower.example_input(5).numpy()
    ref = ort.InferenceSession(str(fp32)).run(None, {tower_name: x})[0]
    for method in QUANTIZATIONS:
        path = quantize_onnx(fp32, quantized_path(fp32, method), method, calibration=calibration)
        assert path.name == (f"{tower_name}.int8.onnx" if method == "dynamic"
                             else f"{tower_name}.int8-{method}.onnx")
        got = ort.InferenceSession(str(path)).run(None, {tower_name: x})[0]
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.95, (method, cos)
    with pytest.raises(ValueError, match="needs calibration"):
        quantize_onnx(fp32, tmp_path / "x.onnx", "static")
    with pytest.raises(ValueError, match="unknown quantisation"):
        quantize_onnx(fp32, tmp_path / "x.onnx", "float8")


@pytest.mark.slow
def test_onnx_accuracy_matches_the_checkpoint_on_the_demo_test_split(repo_root, tmp_path):
    """The demo's teacher, cache and test split (built into the tests' private cache: minutes)."""
    from dime_nas.deliverable import export_student
    from dime_nas.distill.trainer import distill
    from dime_nas.pipeline import teacher_spec
    from dime_nas.student import StudentConfig
    from dime_nas.teacher import load_teacher

    config = load_experiment(repo_root / "experiments" / "demo.yaml")
    config = dataclasses.replace(config, deliverable=dataclasses.replace(config.deliverable, quantization=["dynamic"],
                                                                         latency_rounds=1))
    cache = api.build_cache(config, progress=False)
    student = StudentConfig.from_dict({"embed_dim": cache.embed_dim, "vision": {
        "kind": "vit", "image_size": 32, "layers": 1, "width": 64, "heads": 2, "mlp_ratio": 4.0, "patch_size": 8},
        "text": {"kind": "teacher"}})
    towers, _ = distill(student, cache, config.distill)  # the demo's short run: well above chance
    export_student(student, towers, tmp_path, preprocess_cfg=cache.manifest["preprocess"],
                   teacher=load_teacher(teacher_spec(config.teacher)))
    v = verify_export(tmp_path, config, get_target(config.target), [], progress=False)
    assert v["torch"]["accuracy"] > 0.4
    assert abs(v["variants"]["fp32"]["accuracy"] - v["torch"]["accuracy"]) <= 0.005
