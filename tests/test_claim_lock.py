"""The claim lock excludes across processes: while one process holds a study's lock, another
process's ``acquire`` waits, and it gets the lock once the first releases it (SQLite, journal
file and PostgreSQL storages)."""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

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


def test_a_second_process_waits_for_the_claim_lock_until_the_first_releases_it(storage_url):
    first = Holder(storage_url)
    second = None
    try:
        first.expect("acquired")
        second = Holder(storage_url)
        second.expect("trying")
        early = second.next_line(WATCH_S)
        assert early is None, f"the second process printed {early!r} while the first held the lock"
        first.release()
        first.expect("released")
        second.expect("acquired", timeout=30)  # the first still runs: the release itself freed it
        second.release()
        second.expect("released")
    finally:
        for holder in (first, second):
            if holder is not None:
                holder.close()
    assert first.process.returncode == second.process.returncode == 0
