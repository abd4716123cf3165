"""The study's storage: the driver a bare PostgreSQL URL gets, the password never printed,
which URLs are shared databases, a server that accepts a connection but never answers
failing in one line at the connect timeout instead of hanging the worker, connections the
server dropped replaced without an error, and the heartbeat's settings on a real server."""
from __future__ import annotations

import logging
import socket
import threading
import time
import warnings

import optuna
import pytest
import sqlalchemy.exc as sa
from conftest import DriverError, dropped_connection

from dime_nas.errors import ConfigError
from dime_nas.search import storage as storage_module
from dime_nas.search.storage import (Heartbeat, _close_quietly, _first_line, _where, heartbeat_interval, is_database,
                                     mask_url, normalise_url, open_storage, retried_trial_number)


@pytest.mark.parametrize("url, expected", [
    ("postgresql://u:pw@db.example:5433/nas", "postgresql+psycopg://u:pw@db.example:5433/nas"),
    ("postgres://u@db/nas", "postgresql+psycopg://u@db/nas"),
    ("postgresql://u:a://b@db/nas", "postgresql+psycopg://u:a://b@db/nas"),  # "://" in the password
    ("postgresql+psycopg2://u@db/nas", "postgresql+psycopg2://u@db/nas"),  # a driver named: kept
    ("sqlite:///runs/study.db", "sqlite:///runs/study.db"),
    ("mysql://u@db/nas", "mysql://u@db/nas"),
    ("postgresql", "postgresql"),
])
def test_a_bare_postgresql_url_names_the_psycopg_driver_and_others_are_kept(url, expected):
    assert normalise_url(url) == expected


@pytest.mark.parametrize("url, expected", [
    ("postgresql://nas:s3cret@db:5432/study", "postgresql://nas:***@db:5432/study"),
    ("postgresql+psycopg://nas:p@ss:w@rd@db/study", "postgresql+psycopg://nas:***@db/study"),
    ("postgresql://nas:p%40ss@db/study?application_name=a@b", "postgresql://nas:***@db/study?application_name=a@b"),
    ("postgresql://nas@db/study", "postgresql://nas@db/study"),  # no password: nothing to hide
    ("sqlite:///runs/study.db", "sqlite:///runs/study.db"),
])
def test_a_printed_url_never_shows_the_password(url, expected):
    assert mask_url(url) == expected


@pytest.mark.parametrize("url, shared", [
    ("postgresql://u@db/nas", True), ("postgresql+psycopg://u@db/nas", True), ("mysql://u@db/nas", True),
    ("sqlite:///runs/study.db", False), ("sqlite:////abs/study.db", False), ("journal:runs/study.log", False),
])
def test_server_urls_are_shared_databases_and_local_files_are_not(url, shared):
    assert is_database(url) is shared


def test_a_server_that_never_answers_fails_in_one_line_at_the_connect_timeout():
    """A firewall that lets the connection in and drops everything after (simulated by a
    socket that is listening but never read) must not hang a worker: the connect timeout
    (10 s) ends it with the usual one-line error naming the host."""
    pytest.importorskip("psycopg")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody answers
        port = silent.getsockname()[1]
        outcome: list = []

        def connect() -> None:
            start = time.monotonic()
            try:
                open_storage(f"postgresql://nas:pw@127.0.0.1:{port}/study")
                outcome.append(("opened", time.monotonic() - start))
            except ConfigError as err:
                outcome.append((str(err), time.monotonic() - start))

        worker = threading.Thread(target=connect, daemon=True)
        worker.start()
        worker.join(60)
    assert outcome, "opening the storage still hung after 60 s"
    message, waited = outcome[0]
    assert 9 <= waited < 40
    assert message.startswith(f"search.storage: cannot open storage 'postgresql://nas:***@127.0.0.1:{port}/study' "
                              f"(host 127.0.0.1:{port}, database study): OperationalError: ")
    assert "timeout" in message and "\n" not in message


def test_connections_the_server_dropped_are_replaced_without_an_error(postgres_url, caplog):
    """A proxy's idle timeout or a server restart closes pooled connections: the pool checks a
    connection before handing it out (pre-ping), so the next call neither fails nor needs a retry."""
    import psycopg

    storage = open_storage(postgres_url)
    optuna.create_study(storage=storage, study_name="s")
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        dropped = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
    assert dropped >= 1  # the storage's pooled connection
    with caplog.at_level(logging.WARNING, logger="dime_nas.search.storage"):
        assert storage.get_study_id_from_name("s") >= 0
    assert [r.getMessage() for r in caplog.records if r.name == "dime_nas.search.storage"] == []  # no retry


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
@pytest.mark.parametrize("retries", [None, 2])
def test_heartbeat_grace_and_retries(postgres_url, retries):
    """A database storage beats, waits out the grace, and runs a dead worker's trial again as
    often as asked (the default: once)."""
    storage = open_storage(postgres_url, heartbeat_s=7, **({} if retries is None else {"retries": retries}))
    assert storage.get_heartbeat_interval() == 7 and storage.grace_period == 21  # grace: 3 beats by default
    assert open_storage(postgres_url, heartbeat_s=7, grace_s=5).grace_period == 5
    assert open_storage(postgres_url).get_heartbeat_interval() is None  # no heartbeat_s: no beats
    study = optuna.create_study(storage=storage, study_name="s")
    stale = storage.get_heartbeat_stale_trial_callback()  # what a live worker calls on a dead one's trial
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    first = trial.number
    for _ in range(retries or 1):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        stale(study, study.trials[-1])
        again = study.trials[-1]
        assert again.state == optuna.trial.TrialState.WAITING and again.params == trial.params
        assert retried_trial_number(again) == first  # a retry of a retry names the first
        trial = study.ask()  # the waiting retry is the next trial asked for
        assert trial.number == again.number
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    count = len(study.trials)
    stale(study, study.trials[-1])
    assert len(study.trials) == count  # retried as often as asked, then left failed


@pytest.mark.parametrize("url, where", [
    ("postgresql://nas:pw@db.example:5433/study", "'postgresql://nas:***@db.example:5433/study' "
                                                  "(host db.example:5433, database study)"),
    ("postgresql:///Xstudy", "'postgresql:///Xstudy' (host localhost:default port, database Xstudy)"),
    ("postgresql://nas@db", "'postgresql://nas@db' (host db:default port, database (none))"),
    ("sqlite:///runs/study.db", "'sqlite:///runs/study.db'"),
])
def test_an_error_names_where_the_storage_is_and_never_the_password(url, where):
    assert _where(url) == where


@pytest.mark.parametrize("exc, line", [
    (dropped_connection(), "OperationalError: server closed the connection unexpectedly"),  # the driver's words, first line
    (ValueError("  \n could not reach postgresql://nas:pw@db/study\nmore"),
     "ValueError: could not reach postgresql://nas:***@db/study"),
    (ValueError(""), "ValueError: "),
    (ModuleNotFoundError("No module named 'psycopg'"), "ModuleNotFoundError: no database driver (No module named "
                                                       "'psycopg'); install the extra: pip install 'dime-nas[postgres]'"),
])
def test_a_storage_error_is_one_line(exc, line):
    assert _first_line(exc) == line


def test_a_missing_database_driver_or_an_unwritable_file_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:  # pg8000 is not installed: Optuna's ImportError
        open_storage("postgresql+pg8000://nas:pw@db/study")
    assert str(info.value) == (
        "search.storage: cannot open storage 'postgresql+pg8000://nas:***@db/study' (host db:default port, "
        "database study): ImportError: no database driver (Failed to import DB access module for the specified "
        "storage URL. Please install appropriate one.); install the extra: pip install 'dime-nas[postgres]'")
    url = f"sqlite:///{tmp_path / 'missing-folder' / 'study.db'}"
    with pytest.raises(ConfigError) as info:
        open_storage(url)
    assert str(info.value) == f"search.storage: cannot open storage {url!r}: OperationalError: unable to open database file"


def _race(kind: type, message: str) -> Exception:
    return kind("CREATE TABLE studies ...", {}, DriverError(message))


@pytest.mark.parametrize("error, lost_race", [
    (_race(sa.IntegrityError, 'duplicate key value violates unique constraint "pg_type_typname_nsp_index"'), True),
    (_race(sa.ProgrammingError, 'relation "studies" already exists'), True),
    (_race(sa.IntegrityError, 'null value in column "study_name" violates not-null constraint'), False),
    (_race(sa.OperationalError, 'relation "studies" already exists'), False),
])
def test_workers_that_lose_the_race_to_create_the_tables_try_again(monkeypatch, error, lost_race):
    """Workers started together on an empty database all create Optuna's tables: a loser sees
    the winner's half-made schema and tries again with growing waits (4 tries in all); any
    other error is reported at once."""
    tries, waits = [], []

    def storage_failing_twice(url, **kwargs):
        tries.append(url)
        if len(tries) <= 2:
            raise error
        return "storage"

    monkeypatch.setattr(storage_module, "RetryingRDBStorage", storage_failing_twice)
    monkeypatch.setattr(storage_module.time, "sleep", waits.append)
    if lost_race:
        assert open_storage("postgresql://u@h/db") == "storage"
        assert tries == ["postgresql+psycopg://u@h/db"] * 3 and waits == [0.5, 1.0]
    else:
        with pytest.raises(ConfigError, match=f"{type(error).__name__}: "):
            open_storage("postgresql://u@h/db")
        assert len(tries) == 1 and waits == []


def test_a_schema_race_lost_four_times_is_reported(monkeypatch):
    tries, waits = [], []

    def always_lost(url, **kwargs):
        tries.append(url)
        raise _race(sa.ProgrammingError, 'relation "studies" already exists')

    monkeypatch.setattr(storage_module, "RetryingRDBStorage", always_lost)
    monkeypatch.setattr(storage_module.time, "sleep", waits.append)
    with pytest.raises(ConfigError, match='ProgrammingError: relation "studies" already exists'):
        open_storage("postgresql://u@h/db")
    assert len(tries) == 4 and waits == [0.5, 1.0, 1.5]


def test_opening_a_storage_with_heartbeats_gives_no_warning(tmp_path):
    """Heartbeats are "experimental" in Optuna: each worker would print the notice otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        storage_module.retry_callback(1)
        open_storage(f"sqlite:///{tmp_path / 'study.db'}")


def test_a_repeatable_storage_call_is_retried_after_a_dropped_connection(tmp_path, monkeypatch, caplog):
    """The real storage: its first database session fails as a dropped connection does; the
    call is tried again and its warning names the call."""
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({"x": 1})
    real, sessions = storage.scoped_session, []

    def first_session_dropped():
        sessions.append(1)
        if len(sessions) == 1:
            raise dropped_connection()
        return real()

    monkeypatch.setattr(storage, "scoped_session", first_session_dropped)
    monkeypatch.setattr(storage_module.time, "sleep", lambda s: None)
    with caplog.at_level(logging.WARNING, logger="dime_nas.search.storage"):
        trials = storage.get_all_trials(study._study_id)
    assert len(trials) == 1 and len(sessions) == 2
    assert [r.getMessage() for r in caplog.records if r.name == "dime_nas.search.storage"] == [
        "the study's database failed while calling get_trials (OperationalError: server closed the connection "
        "unexpectedly); trying again in 0.5 s"]


class _Closing:
    def __init__(self, error: Exception | None):
        self.error, self.closed = error, False

    def close(self) -> None:
        self.closed = True
        if self.error is not None:
            raise self.error


def test_a_connection_whose_server_is_gone_is_closed_quietly_and_other_errors_are_raised():
    _close_quietly(_Closing(dropped_connection()))
    _close_quietly(_Closing(None))
    with pytest.raises(ValueError, match="a bug"):
        _close_quietly(_Closing(ValueError("a bug")))


class _BeatRecorder:
    """A storage that records heartbeats (the first ``failing`` of them fail as a dropped connection)."""

    def __init__(self, failing: int = 0):
        self.beats: list[int] = []
        self.failing = failing

    def record_heartbeat(self, trial_id: int) -> None:
        self.beats.append(trial_id)
        if len(self.beats) <= self.failing:
            raise dropped_connection()


@pytest.mark.parametrize("failing", [0, 1])
def test_a_trial_beats_while_it_runs_and_stops_when_it_ends(failing, caplog):
    """A trial's worker beats every interval in a daemon thread (it never holds a process open)
    named after the trial; a beat that fails is logged and the next one tried; the thread is
    gone when the trial ends."""
    recorder = _BeatRecorder(failing)
    with caplog.at_level(logging.WARNING, logger="dime_nas.search.storage"):
        with Heartbeat(recorder, 5, 0.05):
            beating = [t for t in threading.enumerate() if t.name == "heartbeat-5"]
            assert len(beating) == 1 and beating[0].daemon
            time.sleep(0.6)
    beats = len(recorder.beats)
    assert beats >= 4 and set(recorder.beats) == {5}  # ~12 at 0.05 s; a loaded machine beats fewer
    assert not beating[0].is_alive()
    time.sleep(0.2)
    assert len(recorder.beats) == beats  # no beat after the trial ended
    assert [r.getMessage() for r in caplog.records] == [
        "heartbeat of trial id 5 not recorded: OperationalError: server closed the connection unexpectedly"] * failing


def test_a_storage_without_heartbeats_gets_no_beats(tmp_path):
    recorder = _BeatRecorder()
    with Heartbeat(recorder, 5, None):
        assert not [t for t in threading.enumerate() if t.name == "heartbeat-5"]
        time.sleep(0.1)
    assert recorder.beats == []
    url = f"sqlite:///{tmp_path / 'study.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        assert heartbeat_interval(optuna.storages.RDBStorage(url, heartbeat_interval=3)) == 3
    assert heartbeat_interval(optuna.storages.RDBStorage(url)) is None
    assert heartbeat_interval(optuna.storages.InMemoryStorage()) is None  # a storage with no heartbeat at all
