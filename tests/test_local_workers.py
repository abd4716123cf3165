"""search.local_workers: extra worker processes on one machine, and the gate that keeps their
training off the cores while one of them times a model."""
from __future__ import annotations

import threading
import time

import pytest

from conftest import write_experiment
from dime_nas import api
from dime_nas.config import load_experiment
from dime_nas.errors import ConfigError
from dime_nas.search.local_workers import LocalWorkers, TimingGate, threads_each
from dime_nas.search.record import TrialRecord


def test_training_waits_while_another_worker_times_a_model(tmp_path):
    timer, trainer = TimingGate(tmp_path / "timing.lock", settle_s=0.0), TimingGate(tmp_path / "timing.lock")
    stepped = threading.Event()

    def train_one_step():
        trainer.step()
        stepped.set()

    with timer.timing():
        t = threading.Thread(target=train_one_step)
        t.start()
        assert not stepped.wait(0.5), "a training step ran while a model was being timed"
    assert stepped.wait(5), "training did not resume after the timing"
    t.join()
    trainer.step()  # nobody timing: no wait


def test_threads_are_shared_out_and_a_config_object_cannot_spawn_workers(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert (threads_each(1), threads_each(2), threads_each(3), threads_each(16)) == (8, 4, 2, 1)
    with pytest.raises(ConfigError, match="local_workers"):
        LocalWorkers(None, "sqlite:///x.db", tmp_path, extra=1, threads=1)


def test_a_search_with_two_local_workers_holds_each_architecture_once(tmp_path, tiny_teacher_dir):
    path = write_experiment(tmp_path, tiny_teacher_dir, trials=6)
    path.write_text(path.read_text().replace("sampler: random}", "sampler: random, local_workers: 2}")
                    .replace("steps: 4,", "steps: 30,", 1))
    outcome = api.search(load_experiment(path), out=tmp_path / "run", progress=False)
    records = [TrialRecord.from_trial(t) for t in outcome.study.get_trials()]
    trained = [r.arch_key for r in records if r.reused_from is None]
    assert outcome.distinct == 6 and len(trained) == len(set(trained)) == 6
    log = (tmp_path / "run" / "worker-1.log").read_text()
    assert "done:" in log and "error" not in log.lower(), log[-2000:]
    assert (tmp_path / "run" / "timing.lock").exists()
