"""A worker on a real PostgreSQL study survives what the database and other workers do to it mid-trial:
dropped connections, a server restart, serialization failures and deadlock victims, its trial failed by
another worker while it was frozen; and Ctrl-C still finishes the trial in flight."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import write_experiment

from dime_nas.search.record import TrialRecord
from dime_nas.search.storage import normalise_url, open_storage
from dime_nas.search.study import trial_counts, trial_status

psycopg = pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
RUNNING = (optuna.trial.TrialState.RUNNING,)


def _experiment(tmp_path: Path, teacher: Path, trials: int, steps: int) -> Path:
    """The test experiment with 1 s heartbeats and trials that train ``steps`` steps (long enough to hit)."""
    exp = write_experiment(tmp_path, teacher, trials=trials)
    text = exp.read_text().replace("search: {trials:", "search: {heartbeat_s: 1, grace_s: 4, trials:")
    exp.write_text(text.replace("distill: {steps: 4,", f"distill: {{steps: {steps},"))
    assert subprocess.run([sys.executable, "-m", "dime_nas.cli", "cache", str(exp)], cwd=tmp_path,
                          capture_output=True, timeout=600).returncode == 0
    return exp


class Worker:
    """A `dime-nas worker` process whose database sessions carry ``name`` (PGAPPNAME); its output in a log."""

    def __init__(self, exp: Path, url: str, name: str, trials: int | None = None):
        self.name, self.log = name, exp.parent / f"{name}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PGAPPNAME": name}
        cmd = [sys.executable, "-m", "dime_nas.cli", "--debug", "worker", str(exp), "--storage", url, "--quiet",
               "--out", str(exp.parent / "run")] + (["--trials", str(trials)] if trials else [])
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(cmd, cwd=exp.parent, env=env, stdout=f, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 600) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text()


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="t", storage=normalise_url(url))


def _trial_in_flight(url: str, worker: Worker, deadline_s: float = 300) -> optuna.trial.FrozenTrial:
    """The worker's running trial, once it has claimed an architecture (training is next)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        assert worker.proc.poll() is None, worker.output()[-3000:]
        try:
            running = _study(url).get_trials(states=RUNNING)
        except KeyError:  # no study yet
            running = []
        mine = [t for t in running if (TrialRecord.from_trial(t).worker or {}).get("pid") == worker.proc.pid
                and TrialRecord.from_trial(t).arch_key]
        if mine:
            return mine[0]
        time.sleep(0.05)
    raise AssertionError(f"{worker.name} never ran a trial")


def _assert_study_done(url: str, trials: int) -> optuna.Study:
    study = _study(url)
    assert trial_counts(study)[0] == trials
    assert not study.get_trials(states=RUNNING)
    return study


def _terminate_sessions(url: str, name: str) -> int:
    """pg_terminate_backend on every database session of the worker ``name``; how many."""
    with psycopg.connect(url, autocommit=True) as admin:
        return len(admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE application_name = %s", (name,)).fetchall())


def test_a_worker_whose_connections_are_dropped_mid_trial_finishes_its_trials(tmp_path, tiny_teacher_dir,
                                                                               postgres_url):
    exp = _experiment(tmp_path, tiny_teacher_dir, trials=3, steps=60)
    worker = Worker(exp, postgres_url, "dropped")
    _trial_in_flight(postgres_url, worker)
    dropped = 0
    while worker.proc.poll() is None:  # every session it has, again and again, until it is done
        dropped += _terminate_sessions(postgres_url, "dropped")
        time.sleep(0.3)
    assert worker.wait() == 0, worker.output()[-3000:]
    assert dropped >= 3
    study = _assert_study_done(postgres_url, 3)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials), [
        (t.state, t.user_attrs.get("reason")) for t in study.trials]


def _pg_ctl(server, *args: str) -> None:
    cmd = [str(server.bin / "pg_ctl"), "-D", str(server.root / "data"), *args]
    if server.user:
        cmd = ["runuser", "-u", server.user, "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def _restart(server, down_s: float) -> None:
    """Stop the server (fast: every session is cut), leave it down ``down_s``, start it as it was."""
    data = server.root / "data"
    options = shlex.split((data / "postmaster.opts").read_text())[1:]  # how it was started, less the binary
    options = [o for i, o in enumerate(options) if o != "-D" and (i == 0 or options[i - 1] != "-D")]
    _pg_ctl(server, "-m", "fast", "-w", "stop")
    time.sleep(down_s)
    try:  # -l: the new server must not hold a pipe of ours open
        _pg_ctl(server, "-l", str(server.root / "log"), "-w", "-t", "60", "start", "-o", shlex.join(options))
    finally:  # the server to stop at the end is the new one
        server.pid = int((data / "postmaster.pid").read_text().splitlines()[0])


def test_a_worker_survives_the_server_restarting_mid_trial(tmp_path, tiny_teacher_dir):
    """Down for 3 s mid-trial: the worker's calls then fail. Its heartbeat must go on after it (or the
    next worker fails its trial) and its trials must all finish."""
    from pg_server import PostgresServer

    server = PostgresServer().start()  # its own server: the restart must not cut other tests' sessions
    try:
        url = server.create_database("restart")
        exp = _experiment(tmp_path, tiny_teacher_dir, trials=2, steps=600)
        worker = Worker(exp, url, "restarted")
        first = _trial_in_flight(url, worker)
        _restart(server, down_s=3)
        time.sleep(5)  # past grace_s: a heartbeat that died with the outage would make the trial stale
        other = optuna.load_study(study_name="t", storage=open_storage(url, heartbeat_s=1, grace_s=4))
        optuna.storages.fail_stale_trials(other)  # what another worker does before its next trial
        assert worker.wait() == 0, worker.output()[-3000:]
        study = _assert_study_done(url, 2)
        assert study.trials[first.number].state == optuna.trial.TrialState.COMPLETE
        assert "trying again" in worker.output()  # the outage was met, and retried
    finally:
        server.stop()


FAULTS = """
CREATE SEQUENCE fault_seq;
CREATE FUNCTION inject_fault() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint := nextval('fault_seq');  -- a sequence: its count survives the rollback the error causes
BEGIN
  IF n % 4 = 0 AND n <= 40 THEN
    RAISE EXCEPTION 'injected fault %', n USING ERRCODE = CASE WHEN n % 8 = 0 THEN '40P01' ELSE '40001' END;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER fault BEFORE INSERT OR UPDATE ON trial_user_attributes FOR EACH ROW EXECUTE FUNCTION inject_fault();
CREATE TRIGGER fault BEFORE INSERT OR UPDATE ON trial_heartbeats FOR EACH ROW EXECUTE FUNCTION inject_fault();
CREATE TRIGGER fault BEFORE INSERT OR UPDATE ON trial_values FOR EACH ROW EXECUTE FUNCTION inject_fault();
"""


def test_serialization_failures_and_deadlock_victims_are_retried(tmp_path, tiny_teacher_dir, postgres_url):
    """The server rejects every 4th write of trial records, heartbeats and values (10 in all) as a
    serialization failure (40001) or a deadlock victim (40P01), as it does under contention."""
    exp = _experiment(tmp_path, tiny_teacher_dir, trials=3, steps=4)
    open_storage(postgres_url)  # Optuna's tables, for the triggers
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(FAULTS)
    worker = Worker(exp, postgres_url, "contended")
    assert worker.wait() == 0, worker.output()[-3000:]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        assert admin.execute("SELECT last_value FROM fault_seq").fetchone()[0] > 40  # every fault was raised
    out = worker.output()  # both kinds were met, and retried
    assert "SerializationFailure: injected fault" in out and "DeadlockDetected: injected fault" in out
    study = _assert_study_done(postgres_url, 3)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_a_trial_failed_by_another_worker_while_its_worker_was_frozen_is_dropped_not_fatal(
        tmp_path, tiny_teacher_dir, postgres_url):
    """A frozen machine (suspended VM, SIGSTOP) misses its heartbeats; another worker fails its trial and
    queues it again. Thawed, the worker must not crash on its trial's records: it drops its result."""
    exp = _experiment(tmp_path, tiny_teacher_dir, trials=3, steps=200)
    worker = Worker(exp, postgres_url, "frozen")
    victim = _trial_in_flight(postgres_url, worker)
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(6)  # past grace_s (4 s) without a heartbeat
        other = optuna.load_study(study_name="t", storage=open_storage(postgres_url, heartbeat_s=1, grace_s=4))
        optuna.storages.fail_stale_trials(other)  # what another worker does before its next trial
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
    assert worker.wait() == 0, worker.output()[-3000:]
    assert f"trial {victim.number} was failed by another worker" in worker.output()
    study = _assert_study_done(postgres_url, 3)
    assert trial_status(study.trials[victim.number]) == "interrupted"
    retry = [t for t in study.trials if TrialRecord.from_trial(t).retry_of == victim.number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE


def test_ctrl_c_finishes_the_trial_in_flight_then_the_worker_leaves(tmp_path, tiny_teacher_dir, postgres_url):
    exp = _experiment(tmp_path, tiny_teacher_dir, trials=4, steps=150)
    worker = Worker(exp, postgres_url, "stopped")
    in_flight = _trial_in_flight(postgres_url, worker)
    worker.proc.send_signal(signal.SIGINT)
    assert worker.wait() == 0, worker.output()[-3000:]
    study = _study(postgres_url)
    assert study.trials[in_flight.number].state == optuna.trial.TrialState.COMPLETE
    assert len(study.trials) == in_flight.number + 1  # no trial started after the Ctrl-C
    assert "stopping after the current trial" in worker.output()
