"""The teacher runs only to build the cache: a complete cache opens without it, and trials check it never runs."""
from __future__ import annotations

import itertools

import pytest

import dime_nas.teacher
from conftest import write_experiment
from dime_nas.config import load_experiment
from dime_nas.pipeline import prepare_cache


def _no_teacher(*args, **kwargs):
    raise AssertionError("the teacher was loaded")


def test_a_complete_cache_opens_without_loading_the_teacher(tmp_path, tiny_teacher_dir, monkeypatch):
    config = load_experiment(write_experiment(tmp_path, tiny_teacher_dir))
    cache, text_cfg = prepare_cache(config, progress=False)
    monkeypatch.setattr(dime_nas.teacher, "load_teacher", _no_teacher)
    again, again_cfg = prepare_cache(config, progress=False)
    assert again.root == cache.root and again_cfg == text_cfg and again.n_images == cache.n_images
    # different inputs (fewer images) need the teacher again
    config.data.max_images = 10
    with pytest.raises(AssertionError, match="the teacher was loaded"):
        prepare_cache(config, progress=False)


def test_a_trial_in_which_the_teacher_ran_fails(tmp_path, tiny_teacher_dir, monkeypatch):
    import optuna

    import dime_nas.search.objective as objective
    from dime_nas import api

    config = load_experiment(write_experiment(tmp_path, tiny_teacher_dir, trials=1))
    counter = itertools.count()
    monkeypatch.setattr(objective, "teacher_forward_count", lambda: next(counter))  # moves during the trial
    outcome = api.search(config, out=tmp_path / "run", progress=False)
    trial = outcome.study.get_trials()[0]
    assert trial.state == optuna.trial.TrialState.FAIL and "teacher ran" in trial.user_attrs["reason"]
