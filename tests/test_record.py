"""The trial record: what a trial stores, written in steps and read back whole."""
from __future__ import annotations

import optuna
import pytest

from dime_nas.search import record
from dime_nas.search.record import TrialRecord, trial_status


def test_a_record_round_trips_through_optuna_user_attrs():
    rec = TrialRecord(arch_key="k1", config={"embed_dim": 64}, describe="vit L1", status="ok", reason="",
                      cost={"latency_ms": 0.2, "params_m": 1.5}, metrics={"accuracy": 0.5}, timings={"cost_s": 1.0},
                      train_steps=4, train_device="cpu", teacher_forwards=0, reused_from=0,
                      worker={"host": "h", "pid": 1})
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs=rec.to_attrs()))
    assert TrialRecord.from_trial(study.trials[0]) == rec
    # 0 and "" are written; unwritten fields (None, empty) are not stored at all
    assert rec.to_attrs()["reused_from"] == 0 and rec.to_attrs()["reason"] == ""
    assert "retry_of" not in rec.to_attrs() and "loss_curve" not in rec.to_attrs()
    assert rec.is_repeat and not TrialRecord(reused_from=None).is_repeat


def test_a_record_of_an_older_version_reads_with_defaults():
    old = TrialRecord.from_attrs({"arch_key": "k", "status": "ok", "a_field_since_removed": 3})
    assert old.arch_key == "k" and old.cost == {} and old.metrics == {} and old.train_steps is None


def test_write_stores_only_the_fields_given_and_refuses_unknown_names():
    study = optuna.create_study()
    trial = study.ask()
    record.write(trial, arch_key="k")
    record.write(trial, status="failed", reason="boom")
    assert study.trials[0].user_attrs == {"arch_key": "k", "status": "failed", "reason": "boom"}
    with pytest.raises(TypeError):
        record.write(trial, stauts="ok")


def test_status_of_a_trial_cut_short_is_interrupted():
    study = optuna.create_study()
    cut = study.ask()
    study.tell(cut, state=optuna.trial.TrialState.FAIL)
    failed = study.ask()
    record.write(failed, status="failed")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    running = study.ask()
    record.write(running, status="ok")  # not final while the trial runs
    assert [trial_status(t) for t in study.trials] == ["interrupted", "failed", "running"]


def test_a_repeat_copies_the_result_but_keeps_its_own_worker():
    from dime_nas.search.objective import _reuse

    study = optuna.create_study()
    first = TrialRecord(arch_key="k", status="ok", cost={"params_m": 1.0}, metrics={"accuracy": 0.4}, train_steps=4,
                        worker={"host": "a", "pid": 1}, retry_of=7)
    study.add_trial(optuna.trial.create_trial(value=0.4, user_attrs=first.to_attrs()))
    trial = study.ask()
    record.write(trial, arch_key="k", worker={"host": "b", "pid": 2})
    assert _reuse(trial, study.trials[0]) == 0.4
    repeat = TrialRecord.from_attrs(study.trials[1].user_attrs)
    assert repeat.reused_from == 0 and repeat.train_steps == 0 and repeat.status == "ok"
    assert repeat.metrics == first.metrics and repeat.cost == first.cost
    assert repeat.worker == {"host": "b", "pid": 2} and repeat.retry_of is None


def test_a_repeat_of_a_repeat_names_the_trial_that_trained_and_copies_values_and_constraints():
    from dime_nas.search.objective import _reuse

    study = optuna.create_study(directions=["maximize", "minimize"])
    trained = TrialRecord(arch_key="k", status="infeasible", metrics={"accuracy": 0.4}, train_steps=4)
    study.add_trial(optuna.trial.create_trial(values=[0.4, 2.5], user_attrs=trained.to_attrs(),
                                              constraints={"latency_ms <= 1": 0.3, "params_m <= 2": -1.0}))
    first_repeat = study.ask()
    assert _reuse(first_repeat, study.trials[0]) == (0.4, 2.5)
    study.tell(first_repeat, [0.4, 2.5])
    second = study.ask()
    assert _reuse(second, study.trials[1]) == (0.4, 2.5)  # copied from the repeat...
    record_of = {t.number: TrialRecord.from_attrs(t.user_attrs) for t in study.get_trials(deepcopy=False)}
    assert record_of[1].reused_from == 0 and record_of[2].reused_from == 0  # ...but names the trained one
    assert record_of[2].status == "infeasible" and record_of[2].train_steps == 0
    assert study.trials[2].constraints == {"latency_ms <= 1": 0.3, "params_m <= 2": -1.0}
