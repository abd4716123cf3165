"""One worker's share of a study: ask a trial, run it, tell its result, until the study has enough.

Any number of workers (processes, machines) run :func:`work_on` against one study.
Before each trial a worker takes the study's :class:`ClaimLock` and counts distinct
architectures evaluated plus trials in flight: if they reach the number asked for, it
does not start one (it waits while others' trials may still fail, then leaves). The
trial it starts records the worker (host, pid, device) and its architecture before the
lock is released, so no two workers can claim the last slot or train one student twice.

The loop is Optuna's ask and tell rather than ``study.optimize``, so that nothing the
study's database does ends a worker: a transient error is retried (``with_retries``,
``RetryingRDBStorage``), a failed heartbeat is logged and beaten again, and a trial that
other workers failed meanwhile (its heartbeat was late: a frozen or starved machine) is
dropped with one line instead of ending the worker (``tell`` skips a finished trial).

Ctrl-C: the first finishes the current trial and leaves, the second stops at once and
records the trial as interrupted.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from . import record
from .objective import TrialContext, claim_architecture, record_failure, run_trial
from .storage import ClaimLock, Heartbeat, heartbeat_interval, retried_trial_number, with_retries

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
    ctrl_c = _StopOnCtrlC()

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
        except (optuna.TrialPruned, optuna.exceptions.UpdateFinishedTrialError):
            raise
        except KeyboardInterrupt:
            record.write(trial, status="interrupted", reason="interrupted (Ctrl-C)")
            raise
        except Exception as exc:  # one bad config must not end the search: recorded, and the loop goes on
            record_failure(trial, exc)
            raise

    with ctrl_c:
        try:
            while may_start():
                run_one(study, objective)
                state["new"] += 1
                if on_trial is not None:
                    on_trial(study)
        finally:
            lock.release()
    return WorkResult(state["new"], ctrl_c.requested, state["capped"])


def run_one(study: optuna.Study, objective: Callable[[optuna.Trial], Any]) -> None:
    """Ask one trial, run ``objective`` on it with its heartbeat beating, tell the result.

    A trial that raises is told FAIL (the objective recorded why) and the worker goes on; a
    trial another worker failed meanwhile is left as they did, with a warning.
    """
    trial = with_retries("starting a trial", lambda: _ask(study))
    values, state = None, TrialState.FAIL
    with Heartbeat(study._storage, trial._trial_id, heartbeat_interval(study._storage)):
        try:
            # None: Optuna decides, as its own loop does (a NaN value makes the trial FAIL)
            values, state = objective(trial), None
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it meanwhile: _tell says so
        except KeyboardInterrupt:
            _tell(study, trial, None, TrialState.FAIL)
            raise
        except Exception as exc:
            _log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, str(exc)[:300])
    _tell(study, trial, values, state)


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():  # Optuna's notice that heartbeats are meant for its own loop: this one beats
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


def _tell(study: optuna.Study, trial: optuna.Trial, values: Any, state: TrialState | None) -> None:
    """Record the trial's end, unless another worker failed it first (its heartbeat was late: a
    frozen or starved machine, a long database outage); then it runs again elsewhere."""

    def tell() -> bool:
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            return False
        # skip_if_finished: a tell whose reply a dropped connection lost is not an error when repeated
        study.tell(trial, values, state=state, skip_if_finished=True)
        return True

    if not with_retries("recording a trial's end", tell):
        _log.warning("trial %d was failed by another worker while this one ran it (its heartbeat was late): "
                     "this worker's result is dropped and the trial runs again", trial.number)


class _StopOnCtrlC:
    """First Ctrl-C: the current trial finishes, then the worker leaves. Second: stop now."""

    def __init__(self):
        self.requested, self._old = False, None

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
