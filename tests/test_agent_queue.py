"""The agent's measurement queue in one event loop, with a scripted measuring process:
how many it admits, one at a time, a client leaving before or during its turn, and the
status each failure of the measuring process is answered with."""
from __future__ import annotations

import asyncio
import time

import pytest

from dime_nas.agent.app import AgentLimits, _Measurements
from dime_nas.agent.worker import ChildDied, ChildFailed, ClientLeft, PastDeadline, main


class _ScriptedProcess:
    """Stands in for the measuring process: a run takes a few event-loop turns, or until
    ``release`` is set, or ends as ``outcome`` says; it stops when its client leaves."""

    def __init__(self, outcome: Exception | None = None, run_s: float = 0.0) -> None:
        self.outcome, self.release, self.run_s = outcome, None, run_s
        self.intervals: list[tuple[float, float]] = []

    async def run(self, job: dict, timeout_s: float, client_gone: asyncio.Future) -> dict:
        start = time.monotonic()
        if self.outcome is not None:
            raise self.outcome
        if self.release is not None:
            await asyncio.wait({asyncio.ensure_future(self.release.wait()), client_gone},
                               return_when=asyncio.FIRST_COMPLETED)
            if client_gone.done():
                raise ClientLeft()
        for _ in range(3):  # long enough for later arrivals to queue behind it
            await asyncio.sleep(0)
        await asyncio.sleep(self.run_s)
        self.intervals.append((start, time.monotonic()))
        return {"job": job}


def _run(scenario, timeout_s: float = 10):
    """Run ``scenario`` in a fresh event loop; a turn never given back fails it rather than hangs."""
    return asyncio.run(asyncio.wait_for(scenario, timeout_s))


def _queue(process: _ScriptedProcess, queue_limit: int = 2) -> _Measurements:
    measurements = _Measurements(AgentLimits(queue_limit=queue_limit, timeout_s=7))
    measurements.process = process
    return measurements


async def _ask(measurements: _Measurements, i: int, client_gone: asyncio.Future | None = None):
    """The job's number if measured, else the status it was refused with (and its message)."""
    gone = client_gone or asyncio.get_running_loop().create_future()
    try:
        return (await measurements.measure({"i": i}, gone))["job"]["i"]
    except ChildFailed as err:
        return err.status, err.message


@pytest.mark.parametrize("turns_before_the_others", range(6))
def test_the_queue_admits_its_limit_whenever_the_others_arrive(turns_before_the_others):
    """1 measuring + queue_limit waiting are all admitted, one more is refused, however the
    arrivals interleave with the first taking its turn (a CI failure: a 503 for the 3rd of 3
    with queue_limit 2, because the first was still counted as waiting once it held the lock)."""
    async def scenario() -> list:
        measurements = _queue(_ScriptedProcess())
        first = asyncio.ensure_future(_ask(measurements, 0))
        for _ in range(turns_before_the_others):
            await asyncio.sleep(0)
        others = [asyncio.ensure_future(_ask(measurements, i)) for i in (1, 2, 3)]
        return await asyncio.gather(first, *others)

    answers = _run(scenario())
    assert answers[:3] == [0, 1, 2]
    assert answers[3] == (503, "busy: 2 measurement(s) already waiting (limit 2)")


def test_a_queue_limit_of_zero_admits_only_the_one_that_measures():
    async def scenario() -> list:
        measurements = _queue(_ScriptedProcess(), queue_limit=0)
        return await asyncio.gather(*(_ask(measurements, i) for i in range(2)))

    assert _run(scenario()) == [0, (503, "busy: 0 measurement(s) already waiting (limit 0)")]


def test_a_client_that_leaves_before_its_turn_frees_its_place_and_not_the_running_ones_turn():
    async def scenario():
        process = _ScriptedProcess()
        process.release = asyncio.Event()
        measurements = _queue(process, queue_limit=1)
        running = asyncio.ensure_future(_ask(measurements, 0))
        await asyncio.sleep(0.01)
        gone = asyncio.get_running_loop().create_future()
        leaving = asyncio.ensure_future(_ask(measurements, 1, gone))
        await asyncio.sleep(0.01)
        refused = await _ask(measurements, 9)  # the queue is full while the second waits
        gone.set_result(None)
        left = await leaving
        later = asyncio.ensure_future(_ask(measurements, 2))  # its place is free again
        await asyncio.sleep(0.01)
        assert not later.done()  # ...but it waits: the first still holds the turn
        process.release.set()
        return refused, left, await running, await later, process.intervals, measurements.admitted

    refused, left, first, later, intervals, admitted = _run(scenario())
    assert refused[0] == 503
    assert left == (499, "the client left before its turn")
    assert (first, later) == (0, 2) and admitted == 0
    (_, end), (start, _) = intervals
    assert start >= end  # one at a time


def test_a_client_that_leaves_while_measured_has_its_run_stopped():
    async def scenario():
        process = _ScriptedProcess()
        process.release = asyncio.Event()  # never set: the run ends only when the client leaves
        measurements = _queue(process)
        gone = asyncio.get_running_loop().create_future()
        asking = asyncio.ensure_future(_ask(measurements, 0, gone))
        await asyncio.sleep(0.01)
        gone.set_result(None)
        left = await asyncio.wait_for(asking, 5)
        process.release = None
        return left, await _ask(measurements, 1)  # the turn was given back

    assert _run(scenario()) == ((499, "the client left: its measurement was stopped"), 1)


@pytest.mark.parametrize("turns_between", range(8))
def test_a_client_that_leaves_just_as_its_turn_comes_gives_the_turn_back(turns_between):
    """The first ends and the second's client leaves a few event-loop turns apart: whichever
    the second sees first, it answers 499 and the turn is free for the next one."""
    async def scenario():
        process = _ScriptedProcess()
        process.release = asyncio.Event()
        measurements = _queue(process)
        first = asyncio.ensure_future(_ask(measurements, 0))
        await asyncio.sleep(0.01)
        gone = asyncio.get_running_loop().create_future()
        second = asyncio.ensure_future(_ask(measurements, 1, gone))
        await asyncio.sleep(0.01)
        process.release.set()
        for _ in range(turns_between):
            await asyncio.sleep(0)
        gone.set_result(None)
        left = await second
        return await first, left, await _ask(measurements, 2), measurements.admitted

    first, left, third, admitted = _run(scenario())
    assert first == 0 and left in (1, (499, "the client left before its turn"),
                                   (499, "the client left: its measurement was stopped"))
    assert third == 2 and admitted == 0


@pytest.mark.parametrize("outcome, status, words", [
    (PastDeadline(), 504, "stopped at the 7 s deadline (it covers loading the model, building its inputs, "
                          "warm-up and timed runs)"),
    (ChildDied("killed by SIGKILL"), 422, "the measuring process died while measuring the model (killed by "
                                          "SIGKILL); it may need more memory than the 2048 MB limit"),
    (ChildFailed(413, "inputs too large"), 413, "inputs too large"),
])
def test_each_way_a_measurement_fails_gets_its_status_and_the_turn_is_given_back(outcome, status, words):
    async def scenario():
        process = _ScriptedProcess(outcome)
        measurements = _queue(process)
        failed = await _ask(measurements, 0)
        process.outcome = None
        return failed, await asyncio.wait_for(_ask(measurements, 1), 5)

    (got_status, message), after = _run(scenario())
    assert got_status == status and words in message and after == 1


RUN_S = 0.05


def test_queued_seconds_are_the_wait_for_the_turn():
    async def scenario():
        process = _ScriptedProcess(run_s=RUN_S)  # runs long beside the event loop's own sub-millisecond noise
        measurements = _queue(process)
        began = time.monotonic()
        results = await asyncio.gather(*(measurements.measure({"i": i}, asyncio.get_running_loop().create_future())
                                         for i in range(3)))
        return results, time.monotonic() - began

    results, elapsed = _run(scenario())
    waits = [r["queued_s"] for r in results]
    assert all(0 <= w <= elapsed for w in waits)
    # the first starts at once, the second waits for one run, the third for two (a timer may end ~1 ms early)
    assert waits[0] < RUN_S / 2 and waits[1] >= RUN_S * 0.9 and waits[2] >= RUN_S * 1.8
    assert all(r["interval"][0] - r["queued_s"] >= 0 for r in results)


@pytest.mark.parametrize("argv", [[], ["XXmeasureXX", "1000"], ["measure"], ["check", "1000"], ["MEASURE", "1"]])
def test_the_measuring_child_refuses_an_unknown_kind_rather_than_measure_without_its_cap(argv, capsys):
    assert main(argv) == 2
    assert "usage: python -m dime_nas.agent.worker" in capsys.readouterr().err


def test_a_measuring_process_that_cannot_start_is_answered_503_naming_it():
    async def scenario():
        measurements = _Measurements(AgentLimits())
        measurements.process.argv = ["no-such-kind"]  # the child refuses it and exits 2
        try:
            return await _ask(measurements, 0), measurements.admitted
        finally:
            await measurements.process.close()

    (status, message), admitted = _run(scenario(), 60)
    # exit code 2, though asyncio's child watcher at times reports 255 after other tests' loops
    assert status == 503 and message.startswith("the measuring process did not start (exit code ")
    assert admitted == 0
