"""The claim lock excludes across processes: while one process holds a study's lock, another
process's ``acquire`` waits, and it gets the lock once the first releases it (SQLite, journal
file and PostgreSQL storages); on PostgreSQL each study has a lock of its own. And the
PostgreSQL lock's session handling, on a scripted connection: a dropped connection while
taking it is retried, one dropped while held is released quietly."""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest
from conftest import dropped_connection

from dime_nas.search import storage
from dime_nas.search.storage import ClaimLock

TESTS = Path(__file__).resolve().parent
WATCH_S = 2.0  # how long the second process is watched for (wrongly) taking a held lock
EXITED = "(the process exited)"
START_S = 90  # a process importing optuna on a loaded machine: generous, only a failure waits this long


class Holder:
    """``claim_lock_holder.py`` in a process of its own, its output lines read as they come."""

    def __init__(self, url: str, study: str = "s"):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen([sys.executable, str(TESTS / "claim_lock_holder.py"), url, study],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(EXITED)  # a holder that died is reported at once, not after the whole timeout

    def next_line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def expect(self, word: str, timeout: float = START_S) -> None:
        seen = []
        while (line := self.next_line(timeout)) is not None:
            if line == word:
                return
            seen.append(line)
            if line == EXITED:
                break
        pytest.fail(f"expected {word!r} within {timeout} s; the process printed {seen[-20:]!r} "
                    f"(exit code {self.process.poll()})")

    def release(self) -> None:
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def storage_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    if request.param == "journal":
        return f"journal:{tmp_path / 'study.log'}"
    return request.getfixturevalue("postgres_url")


@contextlib.contextmanager
def _holders() -> Iterator[Callable[..., Holder]]:
    """Starts holders (``start(url, study)``); every one started is closed at the end."""
    started: list[Holder] = []

    def start(*args: str) -> Holder:
        started.append(Holder(*args))
        return started[-1]

    try:
        yield start
    finally:
        for holder in started:
            holder.close()


def test_a_second_process_waits_for_the_claim_lock_until_the_first_releases_it(storage_url):
    with _holders() as start:
        first = start(storage_url)
        first.expect("acquired")
        second = start(storage_url)
        second.expect("trying")
        early = second.next_line(WATCH_S)
        assert early is None, f"the second process printed {early!r} while the first held the lock"
        first.release()
        first.expect("released")
        second.expect("acquired", timeout=30)  # the first still runs: the release itself freed it
        second.release()
        second.expect("released")
    assert first.process.returncode == second.process.returncode == 0


def test_on_postgresql_each_study_has_a_lock_of_its_own(postgres_url):
    """Two studies on one server: a worker of the second never waits for the first's lock."""
    with _holders() as start:
        first = start(postgres_url, "study-a")
        first.expect("acquired")
        second = start(postgres_url, "study-b")
        second.expect("acquired", timeout=START_S)  # while the first still holds its own
        second.release()
        second.expect("released")
        first.release()
        first.expect("released")


class _Connection:
    """A scripted database session: records its statements; ``fail`` maps an SQL function's
    name to the error that a statement calling it raises."""

    def __init__(self, fail: dict[str, BaseException]):
        self.fail, self.statements, self.closed = fail, [], False

    def execute(self, statement, params) -> None:
        self.statements.append((str(statement), params))
        for function, error in self.fail.items():
            if function in str(statement):
                raise error

    def close(self) -> None:
        self.closed = True


class _Engine:
    def __init__(self, *fails: dict[str, BaseException]):
        self.connections = [_Connection(f) for f in fails]
        self.opened = 0

    def connect(self) -> _Connection:
        self.opened += 1
        return self.connections[self.opened - 1]


class _Storage:
    def __init__(self, *fails: dict[str, BaseException]):
        self.engine = _Engine(*fails)


@pytest.mark.parametrize("url", ["postgresql://u@db/nas", "postgres://u@db/nas", "postgresql+psycopg://u@db/nas"])
def test_the_postgresql_lock_is_one_session_s_advisory_lock_on_the_study_s_key(url):
    scripted = _Storage({})
    lock = ClaimLock(url, scripted, "study-a")
    keys = {ClaimLock(url, scripted, f"study-{i}").key for i in range(20)}
    assert len(keys) == 20 and all(0 <= k < 2 ** 31 for k in keys)  # one per study, a positive 32-bit integer
    lock.release()  # not held: nothing to do
    lock.acquire()
    lock.acquire()  # held already: no second session, no second lock
    connection = scripted.engine.connections[0]
    assert scripted.engine.opened == 1 and not connection.closed
    lock.release()
    assert connection.statements == [("SELECT pg_advisory_lock(:k)", {"k": lock.key}),
                                      ("SELECT pg_advisory_unlock(:k)", {"k": lock.key})]
    assert connection.closed
    lock.release()
    assert len(connection.statements) == 2


def test_a_connection_dropped_while_taking_the_lock_is_closed_and_the_lock_taken_on_a_new_one(monkeypatch, caplog):
    scripted = _Storage({"pg_advisory_lock": dropped_connection()}, {})
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    lock = ClaimLock("postgresql://u@db/nas", scripted, "s")
    with caplog.at_level(logging.WARNING, logger="dime_nas.search.storage"):
        lock.acquire()
    dropped, taken = scripted.engine.connections
    assert dropped.closed and not taken.closed and len(taken.statements) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "the study's database failed while taking the claim lock (OperationalError: server closed the connection "
        "unexpectedly); trying again in 0.5 s"]


def test_ctrl_c_while_waiting_for_the_lock_closes_the_session_and_holds_nothing():
    scripted = _Storage({"pg_advisory_lock": KeyboardInterrupt()})
    lock = ClaimLock("postgresql://u@db/nas", scripted, "s")
    with pytest.raises(KeyboardInterrupt):
        lock.acquire()
    assert scripted.engine.connections[0].closed
    lock.release()  # nothing held: no unlock sent
    assert len(scripted.engine.connections[0].statements) == 1


def test_a_session_the_server_dropped_took_its_lock_with_it_and_other_errors_are_raised():
    scripted = _Storage({"pg_advisory_unlock": dropped_connection()}, {"pg_advisory_unlock": ValueError("a bug")})
    lock = ClaimLock("postgresql://u@db/nas", scripted, "s")
    lock.acquire()
    lock.release()  # quietly: the server freed the lock when the session went
    assert scripted.engine.connections[0].closed
    lock.acquire()
    with pytest.raises(ValueError, match="a bug"):
        lock.release()
    assert scripted.engine.connections[1].closed


def test_a_database_without_a_claim_lock_takes_none_and_releases_none():
    lock = ClaimLock("mysql://u@db/nas", None, "s")  # no storage is touched
    lock.acquire()
    lock.release()
    lock.release()
