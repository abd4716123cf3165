"""Where a study lives: storage URLs, opening them with clear errors, and the claim lock.

- ``sqlite:///FILE`` (the default, one machine), ``journal:FILE`` (a journal file), or a
  database URL (``postgresql://`` or ``mysql://``) that workers on many machines share.
  A bare ``postgresql://`` (or ``postgres://``) is driven by psycopg 3, the driver the
  ``postgres`` extra installs.
- Database storages get Optuna's heartbeats: a worker silent for the grace period is
  dead, its trial is failed by the next worker that starts one and retried.
- :class:`ClaimLock` makes "are enough trials finished or in flight? if not, start one"
  one step across workers, so a study never runs more trials than asked.
"""
from __future__ import annotations

import fcntl
import re
import time
import warnings
import zlib
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlsplit

import optuna

from ..errors import ConfigError

T = TypeVar("T")
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


def normalise_url(url: str) -> str:
    """A bare ``postgresql://``/``postgres://`` URL names the psycopg 3 driver explicitly."""
    scheme, sep, rest = url.partition("://")
    return f"{_DRIVERS[scheme]}://{rest}" if sep and scheme in _DRIVERS else url


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to print)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


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
                return optuna.storages.RDBStorage(normalise_url(url), **kwargs)
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
    if isinstance(exc, ImportError) or "DB access module" in str(exc):
        return (f"{type(exc).__name__}: no database driver ({exc}); install the extra: "
                "pip install 'dime-nas[postgres]'")
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {mask_url(text[0] if text else '')}"


def with_retries(what: str, call: Callable[[], T], attempts: int = 5, first_wait_s: float = 1.0) -> T:
    """``call()``, again after a lost database connection, with doubling waits; then a ConnectionError
    that stops the worker (its trial, if any, is left for the heartbeat to fail)."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if not _is_connection_error(exc):
                raise
            if attempt == attempts - 1:
                raise ConnectionError(f"lost the study's database while {what} ({_first_line(exc)}); "
                                      "this worker stops") from None
            time.sleep(first_wait_s * 2 ** attempt)
    raise AssertionError("unreachable")


def _is_connection_error(exc: BaseException) -> bool:
    try:
        from sqlalchemy.exc import DBAPIError, OperationalError
    except ImportError:  # pragma: no cover - sqlalchemy comes with optuna
        return False
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


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
        if self.url.startswith(("postgresql", "postgres")):
            import sqlalchemy

            conn = self.storage.engine.connect()  # type: ignore[attr-defined]
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            self._held = conn
        elif self.url.startswith(("sqlite:///", "journal:")):
            path = self.url.removeprefix("sqlite:///").removeprefix("journal:")
            f = open(Path(path).with_name(Path(path).name + ".claim-lock"), "a")
            fcntl.flock(f, fcntl.LOCK_EX)
            self._held = f
        else:
            self._held = False

    def release(self) -> None:
        held, self._held = self._held, None
        if held is None or held is False:
            return
        if hasattr(held, "execute"):
            import sqlalchemy

            try:
                held.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            finally:
                held.close()
        else:
            fcntl.flock(held, fcntl.LOCK_UN)
            held.close()
