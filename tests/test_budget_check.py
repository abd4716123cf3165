"""Near-budget latency decisions: re-measured with a reference, decided on the pooled median."""
from __future__ import annotations


import pytest

from dime_nas.config import SearchConfig
from dime_nas.metrics import Budget
from dime_nas.cost import latency
from dime_nas.cost.budget_check import decide_latency_budget
from dime_nas.cost.backend import LatencyBackend, LatencyMeasurement
from dime_nas.cost.targets import Target
from dime_nas.errors import ConfigError
from dime_nas.cost.meter import CostMeter, TimedTowers
from dime_nas.student import StudentConfig

BUDGET = Budget.parse("latency_ms <= 0.3")


def _scripted(values, log, label):
    it = iter(values)

    def measure():
        log.append(label)
        return next(it)

    return measure


def test_far_from_the_budget_is_decided_on_the_first_median_alone():
    log = []
    d = decide_latency_budget(BUDGET, 0.5, _scripted([], log, "cand"), _scripted([], log, "ref"), margin=0.15)
    assert not d.near and not d.feasible and d.pooled_ms == 0.5 and log == []
    d = decide_latency_budget(BUDGET, 0.1, _scripted([], log, "cand"), _scripted([], log, "ref"), margin=0.15)
    assert not d.near and d.feasible and log == []


def test_near_budget_is_remeasured_interleaved_with_the_reference_and_pooled():
    log = []
    # first median 0.31 alone would fail; the pooled median of 0.31, .28, .27, .29, .33 is 0.29
    d = decide_latency_budget(BUDGET, 0.31, _scripted([0.28, 0.27, 0.29, 0.33], log, "cand"),
                              _scripted([1.0, 1.1, 0.9, 1.0], log, "ref"), margin=0.15, rounds=4)
    assert d.near and d.feasible
    assert d.pooled_ms == pytest.approx(0.29)
    assert d.rounds_ms == [0.31, 0.28, 0.27, 0.29, 0.33] and d.reference_ms == [1.0, 1.1, 0.9, 1.0]
    assert log == ["cand", "ref"] * 4
    record = d.to_dict()
    assert record["first_ms"] == 0.31 and record["margin"] == 0.15 and record["near"] is True
    lo, hi = record["spread_ms"]
    assert 0.27 <= lo < 0.29 < hi <= 0.33


def test_pooled_median_can_reject_a_first_median_under_the_budget():
    d = decide_latency_budget(BUDGET, 0.29, _scripted([0.33, 0.34, 0.32, 0.31], [], "cand"), None, rounds=4)
    assert d.near and not d.feasible and d.pooled_ms == pytest.approx(0.32)


def test_margin_edges_and_bad_arguments():
    assert decide_latency_budget(BUDGET, 0.345, lambda: 0.3, None, margin=0.15).near  # 15% above: inside
    assert not decide_latency_budget(BUDGET, 0.35, lambda: 0.3, None, margin=0.15).near
    assert not decide_latency_budget(BUDGET, 0.3, lambda: 0.3, None, rounds=0).near
    with pytest.raises(ValueError, match="latency budgets"):
        decide_latency_budget(Budget.parse("params_m <= 3"), 3.0, lambda: 3.0)
    with pytest.raises(ConfigError, match="near_budget_margin"):
        SearchConfig(near_budget_margin=1.5)


def test_exact_edges_one_round_and_the_recorded_budget():
    """Values exactly representable in binary, so each edge is met exactly, not by rounding."""
    budget = Budget.parse("latency_ms <= 1")
    edge = decide_latency_budget(budget, 1.25, lambda: 1.0, None, margin=0.25, rounds=1)
    assert edge.near and edge.rounds_ms == [1.25, 1.0]  # exactly margin away: inside; one round is re-measured
    assert edge.budget == "latency_ms <= 1"  # the record names the budget it decided
    on_budget = decide_latency_budget(budget, 1.0, lambda: 1.0, None, margin=0.25, rounds=2)
    assert on_budget.pooled_ms == 1.0 and on_budget.feasible  # a median exactly at the budget meets it
    # margin 0 is allowed: only a first median exactly at the budget is re-measured
    assert decide_latency_budget(budget, 1.0, lambda: 1.0, None, margin=0.0, rounds=2).near
    for margin, rounds in ((-0.1, 4), (0.15, -1)):
        with pytest.raises(ValueError, match=rf"margin and rounds must be >= 0, got {margin} and {rounds}"):
            decide_latency_budget(budget, 1.0, lambda: 1.0, None, margin=margin, rounds=rounds)


class _ScriptedBackend(LatencyBackend):
    """Returns scripted medians: one list for the candidate's towers, one for the reference tower."""

    name = "onnxruntime"
    script: dict[str, list[float]] = {}
    calls: list[str] = []

    def measure(self, exported, target):
        who = "reference" if "reference" in str(exported.path) else "candidate"
        _ScriptedBackend.calls.append(who)
        median = _ScriptedBackend.script[who].pop(0)
        return LatencyMeasurement(tower=exported.tower, target=target.name, backend=self.name, median_ms=median,
                                  p10_ms=median * 0.9, p90_ms=median * 1.1, p99_ms=median * 1.2, mean_ms=median,
                                  std_ms=0.0, cv=0.0, runs=target.runs, warmup=target.warmup,
                                  batch=target.batch_size, threads=target.intra_op_threads,
                                  providers=["CPUExecutionProvider"], precision=target.precision)


def _scripted_trial(monkeypatch, candidate: list[float], reference: tuple[float, ...] = (1.0,) * 4):
    """A student and a cost meter whose latencies are the scripted medians (4 near-budget rounds)."""
    monkeypatch.setitem(latency.LATENCY_BACKENDS, "onnxruntime", _ScriptedBackend)
    _ScriptedBackend.script = {"candidate": list(candidate), "reference": list(reference)}
    _ScriptedBackend.calls = []
    vision = {"kind": "vit", "image_size": 32, "patch_size": 16, "layers": 1, "width": 64, "heads": 2, "mlp_ratio": 2.0}
    student = StudentConfig.from_dict({"embed_dim": 32, "vision": vision, "text": {"kind": "teacher"}})
    target = Target(name="scripted", description="scripted timings", warmup=0, runs=1)
    return student, CostMeter(target, None, [BUDGET], near_budget_rounds=4)


@pytest.mark.parametrize("script, feasible", [
    ({"candidate": [0.32, 0.29, 0.28, 0.30, 0.27], "reference": [1.0] * 4}, True),
    ({"candidate": [0.28, 0.33, 0.34, 0.31, 0.35], "reference": [1.0] * 4}, False),
])
def test_a_trial_records_both_measurements_and_follows_the_pooled_median(monkeypatch, script, feasible):
    student, meter = _scripted_trial(monkeypatch, script["candidate"], script["reference"])
    cost = meter.measure(student)
    decision = cost["latency_decision"]
    assert decision["near"] and decision["first_ms"] == script["candidate"][0]
    assert decision["rounds_ms"] == script["candidate"] and decision["reference_ms"] == script["reference"]
    assert _ScriptedBackend.calls == ["candidate"] + ["candidate", "reference"] * 4
    assert (BUDGET.violation(cost["latency_ms"]) <= 0) is feasible is decision["feasible"]
    assert cost["latency_ms"] == pytest.approx(sorted(script["candidate"])[2])


@pytest.mark.parametrize("first, again, kept", [(0.20, 0.10, 0.10), (0.10, 0.20, 0.10)])
def test_the_latency_timed_again_after_training_keeps_the_lower_reading(monkeypatch, tmp_path, first, again, kept):
    """A reading slowed by other work on the machine (the first here) is replaced by a later, faster one."""
    student, meter = _scripted_trial(monkeypatch, [first, again])
    holder = TimedTowers(str(tmp_path))
    cost = meter.measure(student, holder)
    assert cost["latency_ms"] == first and "latency_decision" in cost and not cost["latency_decision"]["near"]
    after = meter.time_again(cost, holder)
    assert after["latency_ms"] == kept and after["latency_readings_ms"] == [first, again]
    assert after["latency_p90_ms"] == pytest.approx(kept * 1.1)  # the spread of the reading kept
    assert _ScriptedBackend.calls == ["candidate", "candidate"]  # the same export, timed twice


def test_a_near_budget_decision_is_not_timed_again(monkeypatch, tmp_path):
    student, meter = _scripted_trial(monkeypatch, [0.29, 0.28, 0.30, 0.27, 0.31, 0.05])
    holder = TimedTowers(str(tmp_path))
    cost = meter.measure(student, holder)
    assert cost["latency_decision"]["near"]
    assert meter.time_again(cost, holder) == cost and len(_ScriptedBackend.calls) == 9  # 1 + 4 rounds x 2


def test_the_lower_reading_after_training_also_replaces_the_tower_s_own_latency(monkeypatch, tmp_path):
    student, meter = _scripted_trial(monkeypatch, [0.20, 0.10])
    holder = TimedTowers(str(tmp_path))
    after = meter.time_again(meter.measure(student, holder), holder)
    assert after["per_tower"]["image"]["latency_median_ms"] == 0.10 == after["latency_ms"]


def test_the_reference_is_built_once_and_timed_on_its_image_tower_alone(monkeypatch, tmp_path):
    """Also for a target that counts the text tower too (the reference has none of its own)."""
    import dataclasses

    from dime_nas.cost import budget_check, onnx_export, towers
    from dime_nas.cost.targets import get_target

    built, real = [], towers.towers_from_student
    monkeypatch.setattr(towers, "towers_from_student", lambda *a, **k: built.append(1) or real(*a, **k))
    exported, real_export = [], onnx_export.export_tower
    monkeypatch.setattr(onnx_export, "export_tower", lambda *a, **k: exported.append(1) or real_export(*a, **k))
    target = dataclasses.replace(get_target("local-cpu"), towers=("image", "text"), warmup=1, runs=3, sessions=1)
    workdir = tmp_path / "trial" / "reference"  # its folders are made as needed
    timer = budget_check.reference_timer(target, str(workdir))
    assert timer() > 0 and timer() > 0
    assert len(built) == len(exported) == 1  # built and exported once, timed each round
    assert sorted(p.name for p in workdir.glob("*.onnx")) == ["image.onnx"]
    assert budget_check.reference_timer(target, str(workdir))() > 0  # a folder that exists already is used
