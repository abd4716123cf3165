"""The agent's child processes: where measurements and model checks run, so they can be stopped.

The agent starts ``python -m dime_nas.agent.worker measure MAX_MEMORY_BYTES`` (the
measuring process) and ``python -m dime_nas.agent.worker check`` (the ONNX checker). Each
imports what it needs, says it is ready, then reads one JSON job per line on stdin and
answers each with one JSON line on stdout. The measuring process first caps its own
address space (``RLIMIT_AS``) at its size after start-up plus ``MAX_MEMORY_BYTES``. The
agent kills a child at a job's deadline, or when the client leaves, and starts a fresh
one: a measurement's deadline covers loading the model (constant folding included),
building its inputs, warm-up and timed runs alike, a model that allocates too much fails
its own request only, and the checker (which holds the GIL for seconds on a big model)
never stops the agent's event loop.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 120.0  # a fresh child imports numpy and onnxruntime, or onnx (seconds on a small board)
_MEMORY_SIGNS = ("bad_alloc", "Failed to allocate", "out of memory", "MemoryError")


class ChildFailed(Exception):
    """A job that gave no answer; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class PastDeadline(Exception):
    """The job ran past its deadline; the child was killed."""


class ClientLeft(Exception):
    """The client left before the job was answered; the child was killed."""


class ChildDied(Exception):
    """The child died under the job (the message says how)."""


# ---- the child: measure one job at a time ---------------------------------------------------

def input_bytes(inputs: dict[str, list[int]], itemsizes: dict[str, int]) -> int:
    """Bytes the fixed inputs of these shapes take (``itemsizes``: bytes per element of each input)."""
    total = 0
    for name, shape in inputs.items():
        elements = 1
        for d in shape:
            elements *= d
        total += elements * itemsizes[name]
    return total


def measure_onnx(job: dict[str, Any], max_memory_bytes: int | None) -> dict[str, Any]:
    """Time the model of a measure job (see ``ChildProcess.run``) on fixed inputs of the given shapes.

    Returns:
        the statistics of ``timed_sessions`` plus ``warmup``, ``threads`` and ``providers``
        (those that actually ran, from the session).

    Raises:
        ChildFailed: 400 for a model onnxruntime cannot load or run, inputs that do not
            name the model's inputs, or no usable provider; 413 for inputs over the memory
            limit; 422 for a model that needs more memory than the limit.
    """
    import numpy as np
    import onnxruntime as ort

    from .timing import ORT_DTYPES, fixed_input, session_options, timed_sessions, usable_providers

    path, threads = job["path"], job["threads"]
    try:
        providers = usable_providers(job["providers"])
    except ValueError as err:
        raise ChildFailed(400, str(err)) from None

    def open_session() -> Any:
        try:
            return ort.InferenceSession(path, session_options(threads), providers=providers)
        except Exception as err:  # onnxruntime raises Fail, InvalidGraph, RuntimeException, ...
            raise _failure("onnxruntime could not load the model", err, job, max_memory_bytes) from None

    session = open_session()
    wanted = {i.name: i for i in session.get_inputs()}
    inputs = job["inputs"]
    if set(inputs) != set(wanted):
        raise ChildFailed(400, f"inputs must name exactly the model's inputs {sorted(wanted)}, got {sorted(inputs)}")
    dtypes = {name: np.dtype(ORT_DTYPES.get(wanted[name].type, np.float32)) for name in inputs}
    need = input_bytes(inputs, {name: dtype.itemsize for name, dtype in dtypes.items()})
    if max_memory_bytes is not None and need > max_memory_bytes:
        raise ChildFailed(413, f"the inputs take {need} bytes, over the agent's {_mb(max_memory_bytes)} memory "
                                 "limit per measurement")
    try:
        feed = {name: fixed_input(shape, dtypes[name]) for name, shape in inputs.items()}
    except MemoryError as err:
        raise _failure("building the inputs failed", err, job, max_memory_bytes) from None
    opened = [session]

    def next_call() -> Any:
        s = opened.pop() if opened else open_session()
        return lambda: s.run(None, feed)

    try:
        stats = timed_sessions(next_call, job["warmup"], job["runs"], job["sessions"])
    except ChildFailed:
        raise
    except Exception as err:
        raise _failure("the model failed to run", err, job, max_memory_bytes) from None
    return {**stats, "warmup": job["warmup"], "threads": threads, "providers": list(session.get_providers())}


def _failure(what: str, err: BaseException, job: dict[str, Any], max_memory_bytes: int | None) -> ChildFailed:
    """400 naming onnxruntime's complaint, or 422 when it ran out of the memory allowed; files named by hash."""
    text = f"{type(err).__name__}: {err}"
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    path = Path(job["path"])
    first = first.replace(str(path), f"model {job['model']}").replace(str(path.parent), "<store>")
    if isinstance(err, MemoryError) or any(sign in text for sign in _MEMORY_SIGNS):
        limit = f"the agent's {_mb(max_memory_bytes)} limit" if max_memory_bytes else "the memory available"
        return ChildFailed(422, f"{what}: it needs more memory than {limit} per measurement ({first})")
    return ChildFailed(400, f"{what}: {first}")


def _mb(n: int | None) -> str:
    return f"{(n or 0) / 1024**2:g} MB"


def _limit_address_space(max_memory_bytes: int) -> int | None:
    """Cap this process's address space at its present size plus ``max_memory_bytes``; the cap, or None."""
    try:
        import resource

        pages = int(Path("/proc/self/statm").read_text().split()[0])
        limit = pages * os.sysconf("SC_PAGE_SIZE") + max_memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        return limit
    except (ImportError, OSError, ValueError):  # not Linux: the limit is not enforced (docs/agent.md)
        return None


def _die_with_the_agent() -> None:
    """Linux: the kernel kills this child when the agent dies (a long job would otherwise outlive it)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child ends when its stdin closes, after its job
        pass


def main(argv: list[str]) -> int:
    """A child's loop: ``measure MAX_MEMORY_BYTES`` or ``check``; a ready line, then one reply per job."""
    kind = argv[0] if argv else ""
    if [kind, len(argv)] not in (["measure", 2], ["check", 1]):  # anything else would measure without a cap
        print(f"usage: python -m dime_nas.agent.worker (measure MAX_MEMORY_BYTES | check); got {argv}",
              file=sys.stderr)
        return 2
    if kind == "measure":  # imported now, before the cap: the start-up is not a measurement's
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401
    else:
        import onnx.checker  # noqa: F401

        from .store import onnx_problem
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the agent, which stops its children
    _die_with_the_agent()
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to the agent's log, not into the replies
    max_memory_bytes = int(argv[1]) if kind == "measure" else None
    limit = _limit_address_space(max_memory_bytes) if max_memory_bytes else None
    replies.write(json.dumps({"ready": kind, "address_space_limit": limit}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        try:
            if kind == "check":
                reply: dict[str, Any] = {"result": {"problem": onnx_problem(job["path"])}}
            else:
                reply = {"result": measure_onnx(job, max_memory_bytes)}
        except ChildFailed as err:
            reply = {"status": err.status, "error": err.message}
        except MemoryError as err:  # anywhere else (the statistics of a huge run count)
            reply = {"status": 422, "error": _failure("the measurement failed", err, job, max_memory_bytes).message}
        replies.write(json.dumps(reply) + "\n")
    return 0


# ---- the agent's side: start, give a job with a deadline, kill, restart ----------------------

class ChildProcess:
    """The agent's handle on one child (``kind``: "measure" or "check"), one job at a time."""

    def __init__(self, kind: str, *args: str, name: str) -> None:
        self.argv, self.name = [kind, *args], name
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task | None = None
        self._one_at_a_time = asyncio.Lock()

    def start_soon(self) -> None:
        """Start a fresh child in the background unless one runs or is starting."""
        if self._process is None and self._starting is None:
            self._starting = asyncio.ensure_future(self._start())

    async def _start(self) -> asyncio.subprocess.Process:
        env = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # glibc: few malloc arenas, so the cap counts real use
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dime_nas.agent.worker", *self.argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, limit=2**20)
        try:
            ready = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)  # type: ignore[union-attr]
        except asyncio.TimeoutError:
            ready = b""
        except BaseException:  # cancelled (the agent is stopping): leave no process behind, reaped
            process.kill()
            process.stdin.close()  # type: ignore[union-attr]
            await process.wait()
            raise
        if not ready:
            if process.returncode is None:
                process.kill()
            process.stdin.close()  # type: ignore[union-attr]  # with the process reaped, its transport closes
            code = await process.wait()
            raise ChildFailed(503, f"{self.name} did not start ({_exit(code)}); the agent's log says why")
        return process

    async def _ready(self) -> asyncio.subprocess.Process:
        if self._process is not None and self._process.returncode is not None:  # died while idle
            self._process = None
        if self._process is None:
            self.start_soon()
            starting, self._starting = self._starting, None
            assert starting is not None
            self._process = await starting  # a failed start raises here; the next job tries again
        return self._process

    async def run(self, job: dict[str, Any], timeout_s: float, client_gone: asyncio.Future | None = None
                  ) -> dict[str, Any]:
        """The child's answer to ``job``, or the child killed ``timeout_s`` after it took the job.

        A measure job: {"path", "model" (its hash, the only name errors use), "providers",
        "threads", "warmup", "runs", "sessions", "inputs"}; a check job: {"path"}.

        Raises:
            ChildFailed: the child's refusal (400/413/422), or 503 if no child could start.
            PastDeadline, ClientLeft (``client_gone`` completed first), ChildDied.
        """
        async with self._one_at_a_time:
            process = await self._ready()
            answered = False
            try:
                process.stdin.write((json.dumps(job) + "\n").encode())  # type: ignore[union-attr]
                await process.stdin.drain()  # type: ignore[union-attr]
                reply = asyncio.ensure_future(process.stdout.readline())  # type: ignore[union-attr]
                waiting = {reply} if client_gone is None else {reply, client_gone}
                await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
                if not reply.done():
                    reply.cancel()
                    raise ClientLeft() if client_gone is not None and client_gone.done() else PastDeadline()
                line = reply.result()
                if not line:
                    raise ChildDied(_exit(await process.wait()))
                answered = True
            except (ConnectionError, BrokenPipeError):
                raise ChildDied("its pipe broke") from None
            finally:
                if not answered:  # killed at the deadline, died, or the caller was cancelled: a fresh one next
                    self._kill()
        answer = json.loads(line)
        if "error" in answer:
            raise ChildFailed(answer["status"], answer["error"])
        return answer["result"]

    def _kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
        self._process = None
        self.start_soon()

    async def close(self) -> None:
        """Stop the child (the agent is shutting down)."""
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.wait({self._starting})  # it kills and reaps the process it was starting
        process, self._process, self._starting = self._process, None, None
        if process is not None:
            if process.returncode is None:
                process.kill()
            process.stdin.close()  # type: ignore[union-attr]  # lets its transport close before the loop does
            await process.wait()


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
