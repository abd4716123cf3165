"""The study's storage: the driver a bare PostgreSQL URL gets, the password never printed,
which URLs are shared databases, a server that accepts a connection but never answers
failing in one line at the connect timeout instead of hanging the worker, connections the
server dropped replaced without an error, and the heartbeat's settings on a real server."""
from __future__ import annotations

import logging
import socket
import threading
import time

import optuna
import pytest

from dime_nas.errors import ConfigError
from dime_nas.search.storage import is_database, mask_url, normalise_url, open_storage, retried_trial_number


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
