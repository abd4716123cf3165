"""Extra worker processes on this machine for one search (``search.local_workers``).

A small student trains only a little slower on one thread than on two, so on a CPU
machine N one-thread processes finish a search sooner than one N-thread process
(measured: experiments/results/workers.md). Each extra process is a plain
``dime-nas worker`` on the same study; every process, this one included, gets its share
of the cores, since more training threads than cores halve the speed.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError


def threads_each(workers: int) -> int:
    """Training threads per process when ``workers`` processes share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // workers)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (None: unchanged)."""
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class LocalWorkers:
    """``extra`` ``dime-nas worker`` processes on the study at ``storage``; a context manager.

    They run in their own session, so a Ctrl-C at the terminal reaches this process only;
    :meth:`interrupt` passes it on (each finishes its trial and leaves), as does leaving the
    block by an exception. Leaving it waits for them: they stop once the study holds its trials.
    """

    def __init__(self, experiment_file: str | Path | None, storage: str, run_dir: Path, extra: int, threads: int,
                 trials: int | None = None):
        if extra and experiment_file is None:
            raise ConfigError("search.local_workers > 1 needs the experiment as a YAML file (workers load it)",
                              key="search.local_workers")
        self.experiment_file, self.storage, self.run_dir = experiment_file, storage, Path(run_dir)
        self.extra, self.threads, self.trials = extra, threads, trials
        self.procs: list[subprocess.Popen] = []

    def log(self, i: int) -> Path:
        return self.run_dir / f"worker-{i}.log"

    def __enter__(self) -> LocalWorkers:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        cmd = [sys.executable, "-m", "dime_nas.cli", "worker", str(self.experiment_file), "--storage", self.storage,
               "--out", str(self.run_dir), "--quiet"] + (["--trials", str(self.trials)] if self.trials else [])
        for i in range(1, self.extra + 1):
            with open(self.log(i), "w") as log:
                self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True))
        return self

    def interrupt(self) -> None:
        """Ctrl-C to each worker still running: it finishes its current trial and leaves."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.interrupt()
        # a worker's failure loses nothing (this process finishes the trials): it is said, not raised
        for i, p in enumerate(self.procs, 1):
            if p.wait() not in (0, 130, -signal.SIGINT):
                print(f"dime-nas: local worker {i} stopped with exit code {p.returncode}; its log: {self.log(i)}",
                      file=sys.stderr)


class TimingGate:
    """Local workers train one at a time with nobody timing: a latency measurement waits for
    no one, but holds every other local worker's training for its duration.

    Training touches a shared lock before each step; timing holds it exclusively, then lets
    a step already under way elsewhere finish (``settle_s``) before it starts the clock.
    Without this, one worker's training slowed the other's measurements and pushed
    students near the budget over it.
    """

    def __init__(self, path: str | Path, settle_s: float = 0.1):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.settle_s = settle_s

    def step(self) -> None:
        """Before a training step: wait while another local worker is timing a model."""
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            time.sleep(self.settle_s)
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
