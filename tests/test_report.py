"""The Pareto report on a hand-made study: counts, spread, near-budget marks, paths, offline HTML."""
from __future__ import annotations

import csv
import json
import re

import optuna
import pytest

from dime_nas.metrics import Budget
from dime_nas.search.record import TrialRecord
from dime_nas.search.report import write_report


def _add(study, number_key, status, latency, accuracy, *, reused_from=None, near=False):
    cost = {"latency_ms": latency, "latency_p10_ms": latency * 0.9, "latency_p90_ms": latency * 1.2,
            "params_m": 1.0, "gmacs": 0.01, "gflops": 0.02}
    if near:
        cost["latency_decision"] = {"near": True, "first_ms": latency * 1.05, "rounds_ms": [latency] * 5,
                                    "reference_ms": [0.5] * 4, "pooled_ms": latency, "feasible": status == "ok"}
    record = TrialRecord(arch_key=number_key, describe=f"student {number_key}", config={"k": number_key},
                         status=status, reason="", cost=cost, reused_from=reused_from,
                         metrics={"latency_ms": latency, **({"accuracy": accuracy} if accuracy is not None else {})},
                         train_steps=0 if status == "infeasible" else 10)
    values = [accuracy if accuracy is not None else 0.0, latency]
    study.add_trial(optuna.trial.create_trial(values=values, user_attrs=record.to_attrs()))


@pytest.fixture
def study(tmp_path):
    s = optuna.create_study(directions=["maximize", "minimize"], study_name="demo")
    s.set_user_attr("objectives", ["accuracy", "latency_ms"])
    s.set_user_attr("budgets", ["latency_ms <= 0.3"])
    s.set_user_attr("space", str(tmp_path / "spaces" / "tiny.yaml"))
    _add(s, "a", "ok", 0.10, 0.60)
    _add(s, "b", "ok", 0.20, 0.70, near=False)
    _add(s, "c", "ok", 0.28, 0.75, near=True)
    _add(s, "a", "ok", 0.10, 0.60, reused_from=0)
    _add(s, "a", "ok", 0.10, 0.60, reused_from=0)
    _add(s, "d", "infeasible", 0.50, None)
    _add(s, "d", "infeasible", 0.50, None, reused_from=5)
    return s


def test_counts_are_over_distinct_architectures(study, tmp_path):
    summary = write_report(study, tmp_path / "run")
    c = summary["counts"]
    assert c["trials"] == 7 and c["distinct"] == 4 and c["reused"] == 3
    assert c["ok"] == 3 and c["infeasible"] == 1 and c["rejected_before_training"] == 1 and c["near_budget"] == 1
    md = (tmp_path / "run" / "report.md").read_text()
    assert "trials: 7, of which 4 distinct architectures (3 feasible, 1 over budget" in md
    assert "3 repeats" in md and "near-budget latency decisions: 1" in md


def test_front_latency_carries_its_spread_and_near_budget_mark(study, tmp_path):
    write_report(study, tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert "0.280 [0.252-0.336] (near budget)" in md and "0.100 [0.090-0.120] |" in md
    rows = list(csv.DictReader(open(tmp_path / "run" / "trials.csv")))
    near = [r for r in rows if r["near_budget"] == "True"]
    assert [r["arch_key"] for r in near] == ["c"] and float(near[0]["reference_median_ms"]) == 0.5
    assert float(rows[0]["latency_p10_ms"]) == pytest.approx(0.09)


def test_space_is_named_without_the_machines_absolute_path(study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_report(study, tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert "search space: `tiny (spaces/tiny.yaml)`" in md and str(tmp_path) not in md


def test_html_report_needs_no_network(study, tmp_path):
    write_report(study, tmp_path / "run")
    html = (tmp_path / "run" / "report.html").read_text()
    assert not re.findall(r"<script[^>]*\ssrc=", html)  # no script fetched from anywhere
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js itself is inlined


def test_selected_json_is_valid(study, tmp_path):
    summary = write_report(study, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "selected.json").read_text())["counts"] == summary["counts"]


# ---- selection: the reasons are data, and --select reads them -------------------------------------

def test_each_select_mode_picks_by_recorded_reason(study, tmp_path):
    from dime_nas.errors import ConfigError
    from dime_nas.handoff import choose_trials

    run = tmp_path / "run"
    summary = write_report(study, run, extra_budgets=[Budget.parse("latency_ms <= 0.15")], top_k=2)
    by_trial = {p["trial"]: p for p in summary["selected"]}
    assert by_trial[2]["reasons"][0] == "best"  # trial 2 (c) is the most accurate
    assert [p["trial"] for p in choose_trials(run, "best")] == [2]
    # budget: the best overall first, then the best under the --budget 0.15 ms (trial 0, a)
    assert [p["trial"] for p in choose_trials(run, "budget")] == [2, 0]
    knee = choose_trials(run, "knee")
    assert len(knee) == 1 and "knee" in knee[0]["reasons"] and knee[0]["trial"] == summary["knee"]
    top = choose_trials(run, "top:2")
    assert [p["top_rank"] for p in top] == [1, 2] and len(choose_trials(run, "top:1")) == 1
    by_hand = choose_trials(run, "trial:1", study=study)  # any feasible trial, read from the study
    assert by_hand[0]["arch_key"] == "b" and by_hand[0]["metrics"] == {"accuracy": 0.70, "latency_ms": 0.20}
    for bad in ("top:0", "top:x", "kneee", "trial:5", "trial:99", "trial:"):
        with pytest.raises(ConfigError):
            choose_trials(run, bad, study=study)


def test_hypervolume_reference_is_fixed_by_the_experiment_not_by_the_trials(study, tmp_path):
    summary = write_report(study, tmp_path / "run")
    hv = summary["hypervolume"]
    # accuracy floor 0, latency at its budget 0.3: 0.1 x 0.60 + 0.08 x 0.70 + 0.02 x 0.75 by hand
    assert hv["reference"] == [0.0, 0.3] and hv["value"] == pytest.approx(0.131)
    assert "fixed by the experiment" in hv["reference_rule"]
    _add(study, "e", "ok", 0.05, 0.30)  # a new, slower-to-beat trial does not move the reference
    assert write_report(study, tmp_path / "run")["hypervolume"]["reference"] == [0.0, 0.3]
    study.set_user_attr("hv_reference", {"latency_ms": 1.0})
    assert write_report(study, tmp_path / "run")["hypervolume"]["reference"] == [0.0, 1.0]


def test_a_study_made_by_join_study_carries_what_its_report_reads(tmp_path, tiny_teacher_dir):
    """The objectives, budgets, target, hypervolume reference and space of the experiment reach the
    report of the study that join_study created (the report reads them from the study alone)."""
    from conftest import write_experiment
    from dime_nas.config import load_experiment
    from dime_nas.run_dir import RunDir
    from dime_nas.search.objective import TrialContext
    from dime_nas.search.study import join_study

    path = write_experiment(tmp_path, tiny_teacher_dir, budgets=["latency_ms <= 0.3"])
    path.write_text(path.read_text().replace("search: {", "search: {hv_reference: {latency_ms: 1.0}, "))
    config = load_experiment(path)
    ctx = TrialContext.for_experiment(config, None, None, progress=False)
    study, _ = join_study(config, ctx, f"sqlite:///{tmp_path / 'study.db'}", run=RunDir.of(config, tmp_path / "run"))
    _add(study, "a", "ok", 0.10, 0.60)
    summary = write_report(study, tmp_path / "run")
    assert summary["objectives"] == ["accuracy", "latency_ms"] and summary["budgets"] == ["latency_ms <= 0.3"]
    assert summary["target"]["name"] == "fast-cpu"
    assert summary["hypervolume"]["reference"] == [0.0, 1.0]  # the experiment's, not the budget's 0.3
    assert "search space: `space (space.yaml)`" in (tmp_path / "run" / "report.md").read_text()
