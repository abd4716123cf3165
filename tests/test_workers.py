"""Many workers on one study through a real PostgreSQL server, and the shared read-only cache."""
from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import write_experiment

from dime_nas.search.study import trial_counts, trial_status


def _env(**extra: str) -> dict:
    """The environment now (not at import: a mutation run sets which mutant is live after it)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _experiment(tmp_path: Path, teacher: Path, trials: int, grace_s: int = 4) -> Path:
    exp = write_experiment(tmp_path, teacher, trials=trials)
    exp.write_text(exp.read_text().replace("search: {trials:", f"search: {{heartbeat_s: 1, grace_s: {grace_s}, trials:"))
    return exp


def _cli(*args: str, cwd: Path, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dime_nas.cli", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=600, **kw)


def _worker(exp: Path, url: str, cwd: Path, out: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dime_nas.cli", "worker", str(exp), "--storage", url, "--quiet",
                             "--out", out], cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _trained(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that evaluated an architecture themselves (no reuse, not cut short)."""
    return [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE
            and "reused_from" not in t.user_attrs]


def test_three_workers_finish_exactly_the_requested_trials(tmp_path, tiny_teacher_dir, postgres_url):
    # no worker dies here: a grace period a starved CPU cannot outlast (4 s failed live trials at load 15)
    exp = _experiment(tmp_path, tiny_teacher_dir, trials=5, grace_s=60)
    assert _cli("cache", str(exp), cwd=tmp_path).returncode == 0
    workers = [_worker(exp, postgres_url, tmp_path, f"run{i}") for i in range(3)]
    outs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [o[1][-1500:] for o in outs]
    study = optuna.load_study(study_name="t", storage=postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert trial_counts(study)[0] == 5  # exactly the distinct architectures asked for
    trained = _trained(study)
    assert len(trained) == 5 and len({t.user_attrs["arch_key"] for t in trained}) == 5  # none trained twice
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert all(t.user_attrs["worker"]["pid"] in {w.pid for w in workers} for t in trials)


def test_a_killed_worker_s_trial_is_failed_by_heartbeat_and_retried(tmp_path, tiny_teacher_dir, postgres_url):
    exp = _experiment(tmp_path, tiny_teacher_dir, trials=4)
    assert _cli("cache", str(exp), cwd=tmp_path).returncode == 0
    storage = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    victim, other = _worker(exp, postgres_url, tmp_path, "run0"), _worker(exp, postgres_url, tmp_path, "run1")
    deadline, target = time.time() + 300, None
    while time.time() < deadline and target is None:  # kill inside a trial of the victim
        time.sleep(0.05)
        try:
            running = optuna.load_study(study_name="t", storage=storage).get_trials(
                states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            continue
        target = next((t for t in running if t.user_attrs.get("worker", {}).get("pid") == victim.pid
                       and "arch_key" in t.user_attrs), None)
    assert target is not None, "the victim never ran a trial"
    victim.send_signal(signal.SIGKILL)
    killed_at = datetime.datetime.now()
    victim.wait()
    out, err = other.communicate(timeout=600)
    assert other.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="t", storage=storage)
    dead = study.trials[target.number]
    assert dead.state == optuna.trial.TrialState.FAIL and trial_status(dead) == "interrupted"
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == target.number]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
    assert retries[0].params == dead.params and retries[0].user_attrs["worker"]["pid"] == other.pid
    assert trial_counts(study)[0] == 4
    print(f"\nkilled trial {target.number} at {killed_at:%H:%M:%S.%f}; failed at {dead.datetime_complete:%H:%M:%S.%f} "
          f"(+{(dead.datetime_complete - killed_at).total_seconds():.1f} s); retried as trial {retries[0].number} "
          f"from {retries[0].datetime_start:%H:%M:%S.%f} (+{(retries[0].datetime_start - killed_at).total_seconds():.1f} s)")


def test_wrong_password_and_unreachable_host_fail_in_one_line(tmp_path, tiny_teacher_dir, postgres_server):
    exp = write_experiment(tmp_path, tiny_teacher_dir)
    wrong = postgres_server.url(password="not-the-password")
    from pg_server import _free_port

    nowhere = f"postgresql://postgres:hidden-pw@127.0.0.1:{_free_port()}/nas"
    for url in (wrong, nowhere):
        r = _cli("worker", str(exp), "--storage", url, cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert "host 127.0.0.1" in lines[0] and "database" in lines[0] and "***" in lines[0]
        assert "not-the-password" not in lines[0] and "hidden-pw" not in lines[0]
    assert not (tmp_path / "run").exists()  # nothing ran


def test_two_concurrent_cache_builds_leave_one_valid_cache_and_workers_never_build(tmp_path, tiny_teacher_dir):
    from dime_nas.data.cache import FeatureCache

    exp = write_experiment(tmp_path, tiny_teacher_dir)
    env = _env(DIME_NAS_CACHE=str(tmp_path / "shared-cache"))
    r = _cli("worker", str(exp), "--storage", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "dime-nas cache" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "shared-cache" / "features").exists()  # the worker built nothing
    cmd = [sys.executable, "-m", "dime_nas.cli", "cache", str(exp)]
    builds = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outs = [b.communicate(timeout=600) for b in builds]
    assert [b.returncode for b in builds] == [0, 0], [o[1][-1500:] for o in outs]
    cache = FeatureCache(tmp_path / "shared-cache" / "features" / "t")
    assert cache.n_images == 64 and cache.manifest["resumed"] == 0
    exp.write_text(exp.read_text().replace("pixel_size: 32", "pixel_size: 32\n  max_images: 40"))
    r = _cli("worker", str(exp), "--storage", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "built for a different max_images" in r.stderr, r.stderr


def test_each_trial_records_its_architecture_while_it_holds_the_claim_lock(monkeypatch, tmp_path):
    """Else two workers can each miss the other's record and train one student twice."""
    from types import SimpleNamespace

    from conftest import TEST_SPACE

    from dime_nas.config import Objective
    from dime_nas.search import worker
    from dime_nas.search.objective import TrialContext
    from dime_nas.search.storage import ClaimLock
    from dime_nas.search.study import _counts
    from dime_nas.space import SearchSpace

    class RecordingLock(ClaimLock):
        held = False

        def acquire(self):
            self.held = True

        def release(self):
            self.held = False

    (tmp_path / "space.yaml").write_text(TEST_SPACE)
    space = SearchSpace.load(tmp_path / "space.yaml")
    lock, held_at_suggest = RecordingLock("memory", None, "s"), []
    suggest = space.suggest
    monkeypatch.setattr(space, "suggest", lambda trial, **kw: (held_at_suggest.append(lock.held),
                                                               suggest(trial, **kw))[1])
    ran = []
    monkeypatch.setattr(worker, "run_trial", lambda trial, ctx, config: (ran.append(lock.held), 0.5)[1])
    ctx = TrialContext(SimpleNamespace(distill=SimpleNamespace(device="cpu")), space,
                       SimpleNamespace(embed_dim=64), None, None, objectives=[Objective("accuracy")])
    study = optuna.create_study(direction="maximize")
    worker.work_on(study, ctx, lock, want=3, cap=9, timeout_s=None, counts=_counts, fail_stale=lambda s: None)
    assert held_at_suggest and all(held_at_suggest)  # architecture chosen and recorded under the lock
    assert ran and not any(ran)  # and training runs outside it
    assert all("arch_key" in t.user_attrs for t in study.get_trials())
