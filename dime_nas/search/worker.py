"""One worker's share of a study: Optuna's own loop, stopped when the study has enough.

Any number of workers (processes, machines) run :func:`work_on` against one study.
Before each trial a worker takes the study's :class:`ClaimLock` and counts distinct
architectures evaluated plus trials in flight: if they reach the number asked for, it
does not start one (it waits while others' trials may still fail, then leaves). The
trial it starts records the worker (host, pid, device) and its architecture before the
lock is released, so no two workers can claim the last slot or train one student twice.

Ctrl-C: the first finishes the current trial and leaves (``study.stop()``), the second
stops at once and records the trial as interrupted.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna

from . import record
from .objective import TrialContext, claim_architecture, record_failure, run_trial
from .storage import ClaimLock, retried_trial_number, with_retries

_log = logging.getLogger(__name__)
WAIT_POLL_S = 2.0  # how often a worker with nothing to start looks again at others' trials in flight


@dataclass
class WorkResult:
    new_trials: int  # trials this worker ran
    interrupted: bool  # stopped by Ctrl-C
    capped: bool  # stopped by the cap on all trials before the distinct count was reached


def worker_identity(ctx: TrialContext) -> dict[str, Any]:
    """Who runs a trial: host, pid and the device it trains on."""
    device = getattr(ctx.experiment.distill, "device", None) or "cpu"
    return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(device),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def work_on(study: optuna.Study, ctx: TrialContext, lock: ClaimLock, *, want: int | None, cap: int | None,
            timeout_s: float | None, counts: Callable[[optuna.Study], tuple[int, int, int]],
            fail_stale: Callable[[optuna.Study], None], on_trial: Callable[[optuna.Study], None] | None = None
            ) -> WorkResult:
    """Run trials of ``study`` until it holds ``want`` distinct evaluated architectures.

    Args:
        counts: study -> (distinct evaluated, finished trials, trials in flight).
        fail_stale: fails trials whose worker is gone (called under the lock before counting).
        on_trial: called after each of this worker's trials (progress display).
    """
    start, me = time.time(), worker_identity(ctx)
    state = {"new": 0, "capped": False}
    ctrl_c = _StopOnCtrlC(study)

    def may_start() -> bool:
        """Under the lock: True (lock kept until the trial is claimed) or False (stop)."""
        while not ctrl_c.requested:
            if timeout_s is not None and time.time() - start >= timeout_s:
                break
            lock.acquire()
            distinct, total, running = with_retries("counting the study's trials",
                                                    lambda: (fail_stale(study), counts(study))[1])
            if want is not None and distinct >= want:
                break
            capped = cap is not None and total + running >= cap
            if capped and running == 0:
                state["capped"] = True
                _log.warning("stopped at max_trials = %d trials with %d distinct architectures (asked for %s): "
                             "the space may hold fewer distinct students", cap, distinct, want)
                break
            if not capped and (want is None or distinct + running < want):
                return True
            lock.release()  # enough in flight: wait, one of them may yet fail and need redoing
            time.sleep(WAIT_POLL_S)
        lock.release()
        return False

    def objective(trial: optuna.Trial) -> Any:
        try:
            try:
                retry_of = retried_trial_number(study.get_trials(deepcopy=False)[trial.number])
                record.write(trial, worker=me, retry_of=retry_of)
                # under the lock, or two workers could each miss the other's record and train one student twice
                config = claim_architecture(trial, ctx)
            finally:
                lock.release()  # the trial is claimed: others now count it in flight
            return run_trial(trial, ctx, config)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            record.write(trial, status="interrupted", reason="interrupted (Ctrl-C)")
            raise
        except Exception as exc:  # one bad config must not end the search: recorded, then caught by optimize
            record_failure(trial, exc)
            raise

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state["new"] += 1
        if on_trial is not None:
            on_trial(study)
        if ctrl_c.requested or not may_start():
            study.stop()

    with ctrl_c:
        try:
            if may_start():
                study.optimize(objective, catch=(Exception,), callbacks=[after_trial], gc_after_trial=False)
        finally:
            lock.release()
    return WorkResult(state["new"], ctrl_c.requested, state["capped"])


class _StopOnCtrlC:
    """First Ctrl-C: ``study.stop()`` (the current trial finishes). Second: stop now."""

    def __init__(self, study: optuna.Study):
        self.study, self.requested, self._old = study, False, None

    def __enter__(self) -> _StopOnCtrlC:
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\nstopping after the current trial (Ctrl-C again to stop now)", flush=True)

        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: keep the default behaviour
            self._old = None
        return self

    def __exit__(self, *exc) -> bool:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False
