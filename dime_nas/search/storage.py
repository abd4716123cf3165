"""Where a study lives: storage URLs, opening them with clear errors, and the claim lock.

- ``sqlite:///FILE`` (the default, one machine), ``journal:FILE`` (a journal file), or a
  database URL (``postgresql://`` or ``mysql://``) that workers on many machines share.
  A bare ``postgresql://`` (or ``postgres://``) is driven by psycopg 3, the driver the
  ``postgres`` extra installs.
- Database storages get Optuna's heartbeats: a worker silent for the grace period is
  dead, its trial is failed by the next worker that starts one and retried.
- :class:`ClaimLock` makes "are enough trials finished or in flight? if not, start one"
  one step across workers, so a study never runs more trials than asked.
- A transient database error (a dropped connection, a serialization failure, a deadlock
  victim, the server restarting) is retried with growing waits (:func:`with_retries`) by
  :class:`RetryingRDBStorage` and the worker loop; only a database gone for
  ``RETRY_FOR_S`` stops a worker, with :class:`StorageUnavailable`.
"""
from __future__ import annotations

import fcntl
import functools
import logging
import re
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlsplit

import optuna

from ..errors import ConfigError, UserError

T = TypeVar("T")
_log = logging.getLogger(__name__)
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


def normalise_url(url: str) -> str:
    """A bare ``postgresql://``/``postgres://`` URL names the psycopg 3 driver explicitly."""
    scheme, sep, rest = url.partition("://")
    return f"{_DRIVERS[scheme]}://{rest}" if sep and scheme in _DRIVERS else url


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to print), up to the last ``@`` of
    the host part: a password with an unescaped ``@`` (an invalid URL) is not half printed."""
    return re.sub(r"(://[^:/@]+:)[^/?#]*@", r"\1***@", url)


def is_database(url: str) -> bool:
    """A server database (shared by machines), as opposed to a local file."""
    return "://" in url and not url.startswith("sqlite")


def open_storage(url: str, *, heartbeat_s: int | None = None, grace_s: int | None = None,
                 retries: int = 1) -> optuna.storages.BaseStorage:
    """An Optuna storage, connected; a bad or unreachable URL is a one-line ConfigError.

    Database storages beat every ``heartbeat_s`` seconds (when given); a trial whose worker
    was silent for ``grace_s`` is failed and re-queued ``retries`` times.
    """
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
        kwargs: dict = {}
        if is_database(url):
            # pre-ping: a connection dropped while a trial trained is replaced, not reused
            kwargs["engine_kwargs"] = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
            if heartbeat_s:
                kwargs.update(heartbeat_interval=heartbeat_s, grace_period=grace_s or 3 * heartbeat_s,
                              heartbeat_stale_trial_callback=retry_callback(retries))
        for attempt in range(SCHEMA_RACE_TRIES):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna: no notice per worker
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return RetryingRDBStorage(normalise_url(url), **kwargs)
            except Exception as exc:
                if attempt == SCHEMA_RACE_TRIES - 1 or not _lost_schema_race(exc):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except Exception as exc:  # sqlalchemy and the drivers raise many kinds
        raise ConfigError(f"cannot open storage {_where(url)}: {_first_line(exc)}", key="search.storage") from None


# Workers started together on an empty database all create Optuna's tables; the losers of
# that race see the winner's half-made schema and try again once it is done.
SCHEMA_RACE_TRIES = 4


def _lost_schema_race(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", None) or exc)
    return type(exc).__name__ in ("IntegrityError", "ProgrammingError") and (
        "already exists" in text or "duplicate key" in text)


def retry_callback(retries: int):
    """Optuna's callback that queues a stale trial again (same parameters), at most ``retries`` times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries)


def retried_trial_number(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the trial this one runs again, if it is a retry."""
    return trial.system_attrs.get("failed_trial")


def _where(url: str) -> str:
    if not is_database(url):
        return repr(url)
    parts = urlsplit(url)
    return (f"{mask_url(url)!r} (host {parts.hostname or 'localhost'}:{parts.port or 'default port'}, "
            f"database {parts.path.lstrip('/') or '(none)'})")


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, ImportError):  # Optuna's "Failed to import DB access module", or the driver's own
        return (f"{type(exc).__name__}: no database driver ({exc}); install the extra: "
                "pip install 'dime-nas[postgres]'")
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {mask_url(text[0] if text else '')}"


RETRY_FOR_S = 600.0  # how long a worker waits for a lost database before it stops (exit code 3)
MAX_WAIT_S = 30.0  # the longest wait between two tries


class StorageUnavailable(UserError, ConnectionError):
    """The study's database failed for longer than ``RETRY_FOR_S``: the worker stops (its trial, if
    any, is left for the heartbeat to fail and another worker to run again)."""

    exit_code = 3


def with_retries(what: str, call: Callable[[], T], retry_for_s: float | None = None, first_wait_s: float = 0.5) -> T:
    """``call()``, tried again after a transient database error (:func:`is_transient`) with
    doubling waits (at most ``MAX_WAIT_S``) for up to ``retry_for_s`` (default ``RETRY_FOR_S``);
    then :class:`StorageUnavailable`. Any other error is raised at once."""
    deadline = time.monotonic() + (RETRY_FOR_S if retry_for_s is None else retry_for_s)
    wait = first_wait_s
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.monotonic() + wait > deadline:
                raise StorageUnavailable(f"lost the study's database while {what} ({_first_line(_root(exc))}); "
                                         "gave up after retrying") from None
            _log.warning("the study's database failed while %s (%s); trying again in %.1f s", what,
                         _first_line(_root(exc)), wait)
            time.sleep(wait)
            wait = min(2 * wait, MAX_WAIT_S)


def is_transient(exc: BaseException) -> bool:
    """A database error that trying again can cure: the connection or server went away (or is
    restarting), or the server chose this transaction as a serialization-failure or deadlock
    victim. Optuna wraps these in ``StorageInternalError``: the cause chain is searched."""
    try:
        from sqlalchemy import exc as sa
    except ImportError:  # pragma: no cover - sqlalchemy comes with optuna
        return False
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, StorageUnavailable):
        if isinstance(seen, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError)) or (
                isinstance(seen, sa.DBAPIError) and seen.connection_invalidated):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _root(exc: BaseException) -> BaseException:
    """The driver's error under Optuna's and SQLAlchemy's wrappers (it says what happened)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose calls that can be repeated safely (reads, attribute and
    parameter writes, heartbeats) are retried after a transient error (:func:`with_retries`).

    Creating a trial and changing its state are not retried here (a repeat could make a
    second trial or finish one twice): the worker loop retries ``ask`` and ``tell`` (with
    ``skip_if_finished``) itself.
    """


# The RDBStorage methods that each open one database session and give the same result when
# repeated (the private ones are what Optuna's cache in front of it calls); methods built on
# these are retried through them.
REPEATABLE_CALLS = (
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_all_studies", "set_study_user_attr", "set_study_system_attr",
    "get_trial", "_get_trials", "_get_best_trial_id", "get_trial_id_from_study_id_trial_number",
    "get_trial_param", "get_trial_user_attrs", "get_trial_system_attrs", "_set_trial_param",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr", "record_heartbeat",
    "_get_stale_trial_ids")


def _retried(name: str) -> Callable:
    method = getattr(optuna.storages.RDBStorage, name)
    what = f"calling {name.strip('_')}"

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return with_retries(what, lambda: method(self, *args, **kwargs))

    return call


for _name in REPEATABLE_CALLS:
    setattr(RetryingRDBStorage, _name, _retried(_name))


class Heartbeat:
    """Beats for one trial every ``interval_s`` in a background thread while the block runs, as
    Optuna's own loop does; a beat that fails is logged and the next one tried (the thread never
    dies, or the trial of a live worker would look dead). ``interval_s`` None: no beats."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval_s: float | None):
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval_s:
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.trial_id}", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)  # type: ignore[attr-defined]
            except Exception as exc:  # the next beat may get through; a missed one is not fatal
                _log.warning("heartbeat of trial id %d not recorded: %s", self.trial_id, _first_line(exc))
            if self._stop.wait(self.interval_s):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def heartbeat_interval(storage: optuna.storages.BaseStorage) -> int | None:
    """Seconds between a trial's heartbeats on this storage (None: it has none)."""
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


class ClaimLock:
    """A lock all workers of one study share, held while a worker decides to start a trial.

    PostgreSQL: a session advisory lock keyed by the study name; SQLite and journal files:
    an ``flock`` on a file beside them. Other databases: no lock (a few extra trials may run).
    """

    def __init__(self, url: str, storage: optuna.storages.BaseStorage, study_name: str):
        self.url, self.storage, self.key = url, storage, zlib.crc32(study_name.encode()) & 0x7FFFFFFF
        self._held = None

    def acquire(self) -> None:
        if self._held is not None:
            return
        if self.url.startswith("postgres"):  # postgres://, postgresql://, postgresql+driver://
            self._held = with_retries("taking the claim lock", self._advisory_lock)
        elif self.url.startswith(("sqlite:///", "journal:")):
            path = self.url.removeprefix("sqlite:///").removeprefix("journal:")
            f = open(Path(path).with_name(Path(path).name + ".claim-lock"), "a")
            fcntl.flock(f, fcntl.LOCK_EX)
            self._held = f
        else:
            self._held = False

    def _advisory_lock(self):
        import sqlalchemy

        conn = self.storage.engine.connect()  # type: ignore[attr-defined]
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    def release(self) -> None:
        held, self._held = self._held, None
        if held is None or held is False:
            return
        if hasattr(held, "execute"):
            import sqlalchemy

            try:
                held.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            except Exception as exc:
                # a session the server dropped took its lock with it: nothing is left to release
                if not is_transient(exc):
                    raise
            finally:
                _close_quietly(held)
        else:
            fcntl.flock(held, fcntl.LOCK_UN)
            held.close()


def _close_quietly(conn) -> None:
    """Return a connection to the pool; one whose server is gone is discarded instead."""
    try:
        conn.close()
    except Exception as exc:
        if not is_transient(exc):
            raise
