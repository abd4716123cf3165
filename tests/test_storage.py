"""The study's storage URLs: the driver a bare PostgreSQL URL gets, the password never
printed, which URLs are shared databases, and a server that accepts a connection but never
answers failing in one line at the connect timeout instead of hanging the worker."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from dime_nas.errors import ConfigError
from dime_nas.search.storage import is_database, mask_url, normalise_url, open_storage


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
