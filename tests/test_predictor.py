"""The latency predictor on synthetic measured towers, and the search gate that decides
candidates far from the budget by prediction (marked as such in trials.csv and the report)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from dime_nas.config import LatencyPredictorConfig
from dime_nas.cost.predictor import KINDS, LatencyPredictor, fit_predictor, tower_features
from dime_nas.cost.targets import Target
from dime_nas.cost.latency_gate import LatencyGate

TARGET = Target(name="board", description="synthetic", intra_op_threads=1)


def vit_tower(layers: int, width: int, patch: int, size: int, latency_scale: float = 1.0, noise: float = 0.0,
              rng=None) -> dict:
    """A ViT image tower with its MACs/params and a synthetic 'measured' latency.

    The law: a per-layer overhead plus time proportional to MACs, with multiplicative noise.
    """
    tokens = (size // patch) ** 2 + 1
    params = layers * 12 * width**2 + 3 * patch**2 * width
    gmacs = (layers * (12 * tokens * width**2 + 2 * tokens**2 * width) + tokens * 3 * patch**2 * width) / 1e9
    ms = latency_scale * (0.08 * layers + 12.0 * gmacs) * (1 + (rng.normal(0, noise) if noise else 0.0))
    config = {"embed_dim": 64, "vision": {"kind": "vit", "image_size": size, "layers": layers, "width": width,
                                          "heads": max(1, width // 64), "mlp_ratio": 4.0, "patch_size": patch},
              "text": {"kind": "teacher"}}
    return {"target": "board", "tower": "image", "config": config, "gmacs": gmacs, "params": params,
            "precision": "fp32", "batch": 1, "threads": 1, "median_ms": ms}


def synthetic(n: int, seed: int = 0, noise: float = 0.03, **kw) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [vit_tower(int(rng.choice([2, 4, 6, 8, 10, 12])), int(rng.choice([128, 192, 256, 384])),
                      int(rng.choice([16, 32])), int(rng.choice([128, 160, 192, 224])), noise=noise, rng=rng, **kw)
            for _ in range(n)]


def test_fit_reports_held_out_error_and_picks_the_better_kind_by_cross_validation():
    predictor = fit_predictor(synthetic(80), "board", holdout=0.3)
    report = predictor.report
    assert set(report["cross_validation"]) == set(KINDS)
    assert report["kind"] == min(KINDS, key=lambda k: report["cross_validation"][k]["mape"]) == predictor.kind
    held = report["held_out"]
    assert held["n"] == 24 and report["fit_on"] == 56
    # 3% noise in the measurements: a good fit is within a few percent of the truth
    assert held["mape"] < 0.08 and held["within_10"] >= 0.8
    # fresh towers from the same law, without noise
    fresh = synthetic(20, seed=5, noise=0.0)
    rel = np.abs(predictor.predict_tower_ms(fresh) / np.array([t["median_ms"] for t in fresh]) - 1)
    assert rel.mean() < 0.08


def test_a_predictor_fitted_on_noise_reports_a_large_error():
    rng = np.random.default_rng(1)
    towers = synthetic(60)
    for t in towers:  # latencies unrelated to the towers
        t["median_ms"] = float(rng.uniform(1, 100))
    assert fit_predictor(towers, "board").report["held_out"]["mape"] > 0.3


def test_the_robust_kind_is_pulled_less_by_towers_measured_in_a_slow_spell():
    towers = synthetic(60, noise=0.01)
    for t in towers[:6]:  # a tenth of the fitting set read twice as slow, as in a slow spell of a shared machine
        t["median_ms"] *= 2.0
    fresh = synthetic(30, seed=7, noise=0.0)
    truth = np.array([t["median_ms"] for t in fresh])

    def mape(kind: str) -> float:
        predicted = LatencyPredictor("board", kind, towers).refit().predict_tower_ms(fresh)
        return float(np.mean(np.abs(predicted / truth - 1)))

    assert mape("robust-log-linear") < 0.05 < mape("log-linear")


def test_save_and_load_give_the_same_predictions(tmp_path):
    predictor = fit_predictor(synthetic(40), "board")
    path = predictor.save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert data["format"] == "dime-nas-latency-predictor/1" and len(data["samples"]) == 40
    again = LatencyPredictor.load(path)
    towers = synthetic(5, seed=9)
    assert np.allclose(again.predict_tower_ms(towers), predictor.predict_tower_ms(towers))


def test_features_cover_the_tower():
    f = tower_features(vit_tower(6, 256, 16, 224))
    assert f["log_tokens"] == pytest.approx(np.log(14 * 14 + 1)) and f["log_layers"] == pytest.approx(np.log(6))
    assert f["patch_size"] == 16 and f["int8"] == 0.0
    conv = {**vit_tower(6, 256, 16, 224), "precision": "int8",
            "config": {"vision": {"kind": "timm", "timm_model": "resnet18", "image_size": 160}}}
    g = tower_features(conv)
    assert g["int8"] == 1.0 and g["patch_size"] == 0.0 and g["log_image_size"] == pytest.approx(np.log(160))


def test_cli_fit_on_a_measurements_file(tmp_path, capsys):
    from dime_nas.cli import main

    path = tmp_path / "measurements.jsonl"
    rows = synthetic(40) + [{**t, "target": "other"} for t in synthetic(5, seed=3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["predictor", "fit", str(path), "--target", "board"]) == 0
    out = capsys.readouterr().out
    assert "held-out (12 towers): MAPE" in out and "within +-10%" in out
    saved = LatencyPredictor.load(tmp_path / "predictor-board.json")
    assert len(saved.samples) == 40  # the other target's towers are not used
    assert main(["predictor", "fit", str(path), "--target", "nowhere"]) == 2
    assert "0 measured tower(s)" in capsys.readouterr().err


def test_measurements_are_read_from_a_run_directory(tmp_path):
    import optuna

    from dime_nas.search.measurements import run_measurements

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    (tmp_path / "experiment_config.json").write_text(json.dumps({"storage": storage, "config": {}}))
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    study.set_user_attr("target", TARGET.to_dict())
    towers = synthetic(3)
    for i, t in enumerate(towers):
        trial = study.ask()
        per_tower = {"image": {"gmacs": t["gmacs"], "params": t["params"], "latency_median_ms": t["median_ms"]}}
        source = "predicted" if i == 2 else "measured"  # a prediction is not a measurement
        trial.set_user_attr("cost", {"per_tower": per_tower if i < 2 else {"image": {"gmacs": 1, "params": 1}},
                                     "latency_source": source})
        trial.set_user_attr("config", t["config"])
        study.tell(trial, [0.5, 1.0])
    samples = run_measurements(tmp_path, "board")
    assert [s["median_ms"] for s in samples] == [t["median_ms"] for t in towers[:2]]
    assert samples[0]["threads"] == TARGET.intra_op_threads and samples[0]["tower"] == "image"
    assert run_measurements(tmp_path, "other") == []


def _gate(samples: list[dict], budget: float, tmp_path, **options) -> LatencyGate:
    path = fit_predictor(samples, "board").save(tmp_path / "p.json")
    return LatencyGate(LatencyPredictorConfig(path=str(path), **options), TARGET, budget)


def _cost(tower: dict) -> dict:
    return {"per_tower": {"image": {"gmacs": tower["gmacs"], "params": tower["params"]}}}


def test_gate_decides_only_far_from_the_budget(tmp_path):
    gate = _gate(synthetic(40), budget=10.0, tmp_path=tmp_path)
    small, near, big = vit_tower(2, 128, 32, 128), vit_tower(6, 256, 16, 192), vit_tower(12, 384, 16, 224)
    assert small["median_ms"] < 7.5 and 8 < near["median_ms"] < 12 and big["median_ms"] > 12.5
    d = gate.decide(small["config"], _cost(small))
    assert d["latency_source"] == "predicted" and "under budget" in d["latency_prediction"]
    assert d["latency_ms"] == pytest.approx(small["median_ms"], rel=0.15)
    cost = _cost(near)
    assert gate.decide(near["config"], cost) is None  # near the budget: measure it
    assert cost["latency_predicted_ms"] == pytest.approx(near["median_ms"], rel=0.15)
    d = gate.decide(big["config"], _cost(big))
    assert d["latency_source"] == "predicted" and "over budget" in d["latency_prediction"]


def test_gate_measures_a_family_the_predictor_has_too_few_measurements_of(tmp_path):
    vits = synthetic(40)
    convnet = {**vit_tower(2, 128, 32, 128), "config": {"embed_dim": 64, "text": {"kind": "teacher"}, "vision": {
        "kind": "timm", "image_size": 128, "timm_model": "convnext_atto"}}}
    gate = _gate(vits, budget=10.0, tmp_path=tmp_path)
    cost = _cost(convnet)  # predicted far under the budget, but no convnext was ever measured
    assert gate.decide(convnet["config"], cost) is None and cost["latency_predicted_ms"] < 7.5
    gate = _gate(vits + [convnet] * 2, budget=10.0, tmp_path=tmp_path)
    assert gate.decide(convnet["config"], _cost(convnet)) is None  # two of the default three
    gate = _gate(vits + [convnet] * 3, budget=10.0, tmp_path=tmp_path)
    assert gate.decide(convnet["config"], _cost(convnet))["latency_source"] == "predicted"


def test_gate_waits_for_enough_measurements_and_refits_as_they_come(tmp_path):
    gate = LatencyGate(LatencyPredictorConfig(min_measurements=10, refit_every=5), TARGET, budget_ms=10.0)
    towers = synthetic(20, seed=4)
    big = vit_tower(12, 384, 16, 224)
    for t in towers[:9]:
        assert gate.decide(big["config"], _cost(big)) is None
        gate.observe(t["config"], {"per_tower": {"image": {**_cost(t)["per_tower"]["image"],
                                                           "latency_median_ms": t["median_ms"]}}})
    assert gate.predictor is None
    fits = []
    for t in towers[9:]:
        gate.observe(t["config"], {"per_tower": {"image": {**_cost(t)["per_tower"]["image"],
                                                           "latency_median_ms": t["median_ms"]}}})
        fits.append(gate.predictor)  # the object, not its id: a freed predictor's id can be reused
    assert len(gate.samples) == 20 and len({id(p) for p in fits}) == 3  # fitted at 10, refitted at 15 and 20
    assert gate.decide(big["config"], _cost(big))["latency_source"] == "predicted"


def test_gate_refuses_a_predictor_of_another_target(tmp_path):
    from dime_nas.errors import ConfigError

    with pytest.raises(ConfigError, match="predicts target 'board'"):
        path = fit_predictor(synthetic(20), "board").save(tmp_path / "p.json")
        LatencyGate(LatencyPredictorConfig(path=str(path)), Target(name="other", description="x"), 1.0)


def test_predictor_needs_a_latency_budget(tmp_path, tiny_teacher_dir):
    from conftest import write_experiment
    from dime_nas.config import load_experiment
    from dime_nas.errors import ConfigError

    path = write_experiment(tmp_path, tiny_teacher_dir, extra="latency_predictor: {margin: 0.2}")
    with pytest.raises(ConfigError, match="latency_ms <= N"):
        load_experiment(path)


def test_search_marks_trials_decided_by_prediction(tmp_path, tiny_teacher_dir):
    """Every candidate of the test space is predicted far over a tiny budget: all are
    decided without measuring or training, and trials.csv and the report say so."""
    from conftest import write_experiment
    from dime_nas import api

    towers = [{**t, "target": "fast-cpu"} for t in synthetic(30, seed=2)]
    fit_predictor(towers, "fast-cpu").save(tmp_path / "predictor.json")
    extra = "latency_predictor: {path: predictor.json, margin: 0.25, min_measurements: 8}"
    exp = write_experiment(tmp_path, tiny_teacher_dir, trials=3, budgets=["latency_ms <= 0.0001"], extra=extra)
    outcome = api.search(exp, out=tmp_path / "run", progress=False)
    assert outcome.train_steps == 0
    with open(tmp_path / "run" / "trials.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if not r["reused_from"]]
    assert rows and all(r["latency_source"] == "predicted" and r["status"] == "infeasible" for r in rows)
    assert all("over budget by prediction" in r["reason"] and "not measured" in r["reason"] for r in rows)
    assert all(r["latency_predicted_ms"] and r["latency_predicted_ms"] == r["latency_ms"] for r in rows)
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"latency decided by prediction, not measured: {len(rows)} trial(s)" in report
