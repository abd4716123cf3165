"""The metric registry agrees with what trials record: every number an evaluator or the cost
meter produces is a declared metric, and every metric declared for an experiment's evaluation
settings is produced."""
from __future__ import annotations

import math

import pytest

from conftest import write_experiment
from dime_nas import api
from dime_nas.metrics import METRICS, Metric, cost_metrics, evaluated_metrics, headline_quality, quality_metrics
from dime_nas.search.evaluators import EVALUATORS
from dime_nas.search.record import TrialRecord

FULL_EVAL = "eval: {shapes: {n_per_class: 2, shifts: [sketch], retrieval_size: 10}}\n"
NO_SHIFT_NO_RETRIEVAL = "eval: {shapes: {n_per_class: 2, shifts: [], retrieval_size: 0}}\n"


def _recorded_metrics(tmp_path, teacher_dir, evaluator: str, eval_section: str):
    path = write_experiment(tmp_path, teacher_dir, trials=1, extra="supernet: {steps: 2, batch_size: 16, "
                            "text_batch_size: 16, warmup_steps: 0}\n")
    text = path.read_text().replace("search: {", f"search: {{evaluator: {evaluator}, ")
    text = text.replace("eval:\n  shapes: {n_per_class: 2, shifts: [sketch], retrieval_size: 10}\n", eval_section)
    path.write_text(text)
    outcome = api.search(path, out=tmp_path / "run", progress=False)
    (trial,) = [t for t in outcome.study.trials if TrialRecord.from_trial(t).status == "ok"]
    headline = {k for k in TrialRecord.from_trial(trial).metrics if "/" not in k}  # not per task or per seed
    return headline, evaluated_metrics(outcome.run.load_config().eval)


@pytest.mark.parametrize("evaluator, eval_section", [
    ("short_distill", FULL_EVAL), ("short_distill", NO_SHIFT_NO_RETRIEVAL), ("supernet", FULL_EVAL)])
def test_every_metric_a_trial_records_is_declared_and_every_declared_one_is_recorded(
        tmp_path, tiny_teacher_dir, evaluator, eval_section):
    assert set(EVALUATORS) == {"short_distill", "supernet"}, "a new evaluator: add it to this test"
    recorded, declared = _recorded_metrics(tmp_path, tiny_teacher_dir, evaluator, eval_section)
    assert recorded == declared
    if eval_section == NO_SHIFT_NO_RETRIEVAL:  # the settings decide what is produced
        assert not {"shifted_accuracy", "retrieval"} & declared and "accuracy" in declared


def test_the_registry_is_consistent():
    assert cost_metrics() == ("latency_ms", "gmacs", "params_m")
    assert set(quality_metrics()) | set(cost_metrics()) == set(METRICS)
    for name, m in METRICS.items():
        assert m.name == name and m.description and m.unit
        assert not (m.bounded and m.direction == "minimize")  # a bounded quality's floor is its worst value
    assert METRICS["accuracy"].worst == 0.0 and METRICS["latency_ms"].worst == math.inf
    assert METRICS["retrieval"].axis_label == "retrieval (R@1)"
    with pytest.raises(ValueError, match="direction"):
        Metric("x", "up", "quality", "u", "d")


def test_the_headline_quality_is_the_first_quality_objective():
    assert headline_quality(["latency_ms", "retrieval", "accuracy"]) == "retrieval"
    assert headline_quality(["latency_ms"]) == "accuracy"
    assert headline_quality(["latency_ms", "gmacs"], default="latency_ms") == "latency_ms"
