"""Transient database errors are retried, not fatal: the retry rule, the storage it wraps, the exit code."""
from __future__ import annotations

import logging

import optuna
import pytest
import sqlalchemy.exc as sa
from conftest import DriverError

from dime_nas.search import storage
from dime_nas.search.storage import StorageUnavailable, is_transient, with_retries


def _optuna_wrapped(driver_message: str) -> optuna.exceptions.StorageInternalError:
    """How Optuna's RDBStorage reports a lost connection: StorageInternalError from SQLAlchemy's error."""
    try:
        try:
            raise sa.OperationalError("UPDATE trials ...", {}, DriverError(driver_message))
        except sa.OperationalError as exc:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from exc
    except optuna.exceptions.StorageInternalError as wrapped:
        return wrapped


def test_errors_a_retry_can_cure_are_told_from_ones_it_cannot():
    assert is_transient(_optuna_wrapped("terminating connection due to administrator command"))
    assert is_transient(sa.OperationalError("SELECT 1", {}, DriverError("could not serialize access")))
    assert is_transient(sa.InterfaceError("SELECT 1", {}, DriverError("the connection is closed")))
    assert not is_transient(sa.IntegrityError("INSERT", {}, DriverError("duplicate key")))
    assert not is_transient(ValueError("a bug"))
    assert not is_transient(optuna.exceptions.UpdateFinishedTrialError("finished"))
    try:  # a call that already gave up is not retried again by an outer retry
        try:
            raise _optuna_wrapped("connection refused")
        except optuna.exceptions.StorageInternalError:
            raise StorageUnavailable("gave up") from None
    except StorageUnavailable as exc:
        assert is_transient(exc.__context__) and not is_transient(exc)
    try:  # an error raised while handling a lost connection (no "from"): the context is searched too
        try:
            raise sa.OperationalError("SELECT 1", {}, DriverError("the connection is closed"))
        except sa.OperationalError:
            raise RuntimeError("while committing")
    except RuntimeError as exc:
        assert exc.__cause__ is None and is_transient(exc)


def test_a_transient_error_is_retried_with_growing_waits_then_the_call_succeeds(monkeypatch, caplog):
    waits, calls = [], []
    monkeypatch.setattr(storage.time, "sleep", waits.append)

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise _optuna_wrapped("server closed the connection unexpectedly")
        return "read"

    with caplog.at_level(logging.WARNING):
        assert with_retries("reading the study", flaky) == "read"
    assert len(calls) == 4 and waits == [0.5, 1.0, 2.0]
    assert [r.getMessage() for r in caplog.records][0] == (
        "the study's database failed while reading the study (OperationalError: server closed the connection "
        "unexpectedly); trying again in 0.5 s")


def test_a_database_gone_for_longer_than_the_window_stops_with_one_line(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(storage.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(storage.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))

    def down():
        raise _optuna_wrapped("connection refused")

    with pytest.raises(StorageUnavailable) as info:
        with_retries("counting the study's trials", down, retry_for_s=60)
    assert str(info.value) == ("lost the study's database while counting the study's trials "
                               "(OperationalError: connection refused); gave up after retrying")
    assert 30 <= clock[0] <= 60  # it waited about the window, no longer
    clock[0], tries = 0.0, []
    with pytest.raises(StorageUnavailable):  # a wait that ends at the deadline is still waited
        with_retries("x", lambda: tries.append(clock[0]) or down(), retry_for_s=1.5)
    assert tries == [0.0, 0.5, 1.5]


def test_other_errors_are_raised_at_once(monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda s: pytest.fail("waited on a non-transient error"))
    with pytest.raises(ValueError, match="a bug"):
        with_retries("x", lambda: (_ for _ in ()).throw(ValueError("a bug")))


def test_every_retried_storage_call_exists_on_optunas_rdb_storage_and_is_wrapped():
    """An Optuna upgrade that renames one must fail here, not leave the call unretried."""
    for name in storage.REPEATABLE_CALLS:
        assert callable(getattr(optuna.storages.RDBStorage, name)), name
        assert getattr(storage.RetryingRDBStorage, name) is not getattr(optuna.storages.RDBStorage, name), name
    for name in ("_create_new_trial", "set_trial_state_values", "create_new_study"):  # not repeatable
        assert getattr(storage.RetryingRDBStorage, name) is getattr(optuna.storages.RDBStorage, name)


def test_the_cli_exits_with_code_3_and_one_line_when_the_database_stays_away(monkeypatch, capsys):
    from dime_nas import api, cli

    def search(*args, **kwargs):
        raise StorageUnavailable("lost the study's database while starting a trial (OperationalError: x); "
                                 "gave up after retrying")

    monkeypatch.setattr(api, "search", search)
    assert cli.main(["worker", "x.yaml", "--storage", "postgresql://h/db"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lost the study's database" in err[0]
