"""The agent's HTTP API (Starlette): device description, model store, measurement.

- Every request must carry ``Authorization: Bearer TOKEN``; anything else gets 401 and the
  connection is closed before the body is read (the comparison is constant-time).
  WebSocket requests are refused whatever they carry.
- ``PUT /v1/models/{sha256}``: at most ``max_uploads`` at a time (503 beyond); the body
  is streamed to disk and reading stops at the size limit (413) or the upload deadline
  (408); the hash is recomputed (400 on mismatch) and the ONNX checker run in a thread
  (400 with its message).
- ``POST /v1/measure``: validated (400 naming the field; 413 when the inputs alone are
  over the memory limit); one measurement at a time, in the measuring process
  (``worker.py``); up to ``queue_limit`` requests wait their turn, more get 503; a
  measurement is killed at its deadline (504), one that needs more memory than the limit
  fails (422), and a client that leaves is dropped from the queue or its run stopped.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .device import describe_device
from .store import ModelStore, UploadError, check_hash
from .worker import ChildDied, ChildFailed, ChildProcess, ClientLeft, PastDeadline

MAX_REQUEST_BYTES = 64 * 1024  # a measure request's JSON body
CHECK_TIMEOUT_S = 600.0  # the ONNX checker on one model (about 30 s for 512 MB on a desktop CPU)
_CLOSE = {"Connection": "close"}  # answered before the body was read: close rather than drain it
_FIELDS = {"threads": (1, 1024, 1), "batch": (1, 65536, 1), "warmup": (0, 100_000, 10), "runs": (1, 1_000_000, 50),
           "sessions": (1, 1000, 1)}  # name: (lowest, highest, default)


@dataclasses.dataclass(frozen=True)
class AgentLimits:
    """What one client can take from the device (defaults: ``dime-nas agent``'s, docs/agent.md)."""

    max_model_bytes: int = 512 * 1024**2
    max_memory_bytes: int = 2 * 1024**3  # per measurement: its inputs, the model's allocations
    timeout_s: float = 600.0  # per measurement, from when it leaves the queue
    upload_timeout_s: float = 300.0  # per upload, for the whole body
    max_uploads: int = 2  # uploads at a time (each may stage max_model_bytes on disk)
    queue_limit: int = 8  # measure requests waiting behind the one that runs

    def __post_init__(self) -> None:
        if min(self.max_model_bytes, self.max_memory_bytes, self.timeout_s, self.upload_timeout_s,
               self.max_uploads) <= 0 or self.queue_limit < 0:
            raise ValueError(f"agent limits must be positive (queue_limit non-negative): {self}")


class _TokenGate:
    """ASGI middleware: 401 and close unless the bearer token matches (checked before the app runs)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":  # the API has none: refuse before any app code runs
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await JSONResponse({"error": "missing or wrong token"}, status_code=401,
                                   headers={"WWW-Authenticate": "Bearer", **_CLOSE})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Measurements:
    """One measurement at a time in the measuring process; at most ``queue_limit`` waiting behind it."""

    def __init__(self, limits: AgentLimits) -> None:
        # admitted = the one measuring + those waiting; counted on arrival and departure (the event
        # loop runs one coroutine at a time), never read from the lock, whose holder is
        # still on its way out of the queue for a moment after it takes the lock
        self.limits, self.admitted = limits, 0
        self.turn = asyncio.Lock()
        self.process = ChildProcess("measure", str(limits.max_memory_bytes), name="the measuring process")

    async def measure(self, job: dict[str, Any], client_gone: asyncio.Future) -> dict[str, Any]:
        """The result, with ``queued_s`` and ``interval`` (agent monotonic clock: shows one at a time).

        Raises:
            ChildFailed: with the HTTP status to answer (see the module docstring).
        """
        if self.admitted > self.limits.queue_limit:
            raise ChildFailed(503, f"busy: {self.admitted - 1} measurement(s) already waiting "
                                   f"(limit {self.limits.queue_limit})")
        self.admitted += 1
        try:
            return await self._when_its_turn_comes(job, client_gone)
        finally:
            self.admitted -= 1

    async def _when_its_turn_comes(self, job: dict[str, Any], client_gone: asyncio.Future) -> dict[str, Any]:
        queued = time.monotonic()
        my_turn = asyncio.ensure_future(self.turn.acquire())
        try:
            await asyncio.wait({my_turn, client_gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not my_turn.done():
                my_turn.cancel()  # the client left (or this request was cancelled) before its turn
        if client_gone.done():
            if my_turn.done() and not my_turn.cancelled():  # its turn came as the client left
                self.turn.release()
            raise ChildFailed(499, "the client left before its turn")
        try:
            started = time.monotonic()
            result = await self.process.run(job, self.limits.timeout_s, client_gone)
            return {**result, "queued_s": started - queued, "interval": [started, time.monotonic()]}
        except PastDeadline:
            raise ChildFailed(504, f"measurement stopped at the {self.limits.timeout_s:g} s deadline (it covers "
                                   "loading the model, building its inputs, warm-up and timed runs)") from None
        except ClientLeft:
            raise ChildFailed(499, "the client left: its measurement was stopped") from None
        except ChildDied as err:
            raise ChildFailed(422, f"the measuring process died while measuring the model ({err}); it may need "
                                   f"more memory than the {self.limits.max_memory_bytes / 1024**2:g} MB limit") from None
        finally:
            self.turn.release()


def create_app(token: str, store_dir: str | Path, limits: AgentLimits | None = None, *,
               labels: dict[str, str] | None = None) -> Starlette:
    """The agent as an ASGI app (served by uvicorn; tests may serve it the same way)."""
    if not token:
        raise ValueError("the agent needs a non-empty token")
    limits = limits or AgentLimits()
    agent = _Agent(ModelStore(store_dir, limits.max_model_bytes), limits, labels)
    routes = [Route("/v1/device", agent.device, methods=["GET"]),
              Route("/v1/models/{sha256}", agent.model, methods=["PUT", "HEAD"]),
              Route("/v1/measure", agent.measure, methods=["POST"])]
    return _TokenGate(Starlette(routes=routes, lifespan=agent.lifespan), token)  # type: ignore[return-value]


class _Agent:
    """The routes, over the store, the measuring process and the checker's process."""

    def __init__(self, store: ModelStore, limits: AgentLimits, labels: dict[str, str] | None) -> None:
        self.store, self.limits, self.labels = store, limits, dict(labels or {})
        self.measurements = _Measurements(limits)
        self.checker = ChildProcess("check", name="the ONNX checker")
        self.uploads = 0  # in progress

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        children = (self.measurements.process, self.checker)
        for child in children:
            child.start_soon()  # in the background: serving starts at once
        yield
        for child in children:
            await child.close()

    async def device(self, request: Request) -> Response:
        description = await run_in_threadpool(describe_device, self.labels)
        return JSONResponse({**description, "limits": dataclasses.asdict(self.limits)})

    async def model(self, request: Request) -> Response:
        try:
            sha = check_hash(request.path_params["sha256"])
        except ValueError as err:
            return _error(400, str(err))
        if request.method == "HEAD":
            return Response(status_code=200 if self.store.has(sha) else 404)
        if self.uploads >= self.limits.max_uploads:
            return _error(503, f"busy: {self.uploads} upload(s) in progress (limit {self.limits.max_uploads})",
                          close=True)
        length = request.headers.get("content-length")
        self.uploads += 1
        try:
            await self.store.put(sha, request.stream(), int(length) if length and length.isdigit() else None,
                                 self.limits.upload_timeout_s, self._onnx_problem)
        except UploadError as err:
            return JSONResponse({"error": str(err), "bytes_read": err.bytes_read}, status_code=err.status,
                                headers=_CLOSE if err.status in (408, 413) else None)
        except ChildFailed as err:  # the checker's process could not start
            return _error(err.status, err.message)
        except ClientDisconnect:
            return _error(499, "the client left during the upload")
        finally:
            self.uploads -= 1
        return JSONResponse({"model": sha, "stored": True}, status_code=201)

    async def _onnx_problem(self, path: Path) -> str | None:
        """The ONNX checker's complaint about ``path`` (None: valid), from the checker's process."""
        try:
            return (await self.checker.run({"path": str(path)}, CHECK_TIMEOUT_S))["problem"]
        except PastDeadline:
            return f"the ONNX checker did not finish within {CHECK_TIMEOUT_S:g} s"
        except ChildDied as err:
            return f"the ONNX checker died on it ({err})"

    async def measure(self, request: Request) -> Response:
        try:
            async with asyncio.timeout(self.limits.upload_timeout_s):
                body = await _small_body(request)
            job = measure_job(_json(body), self.limits.max_memory_bytes)
        except _Refused as err:
            return _error(err.status, str(err), close=err.status == 413)
        except ClientDisconnect:
            return _error(499, "the client left")
        except TimeoutError:
            return _error(408, f"request not read within {self.limits.upload_timeout_s:g} s", close=True)
        if not self.store.has(job["model"]):
            return _error(404, f"model {job['model']} is not stored here: PUT /v1/models/{job['model']} first")
        job["path"] = str(self.store.path(job["model"]))
        client_gone = asyncio.ensure_future(_disconnected(request))
        try:
            result = await self.measurements.measure(job, client_gone)
        except ChildFailed as err:
            return _error(err.status, err.message)
        finally:
            client_gone.cancel()
        return JSONResponse({**result, "model": job["model"], "batch": job["batch"]})


class _Refused(ValueError):
    """A measure request answered with ``status`` (400 unless said otherwise) before it is queued."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str, close: bool = False) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=_CLOSE if close else None)


async def _small_body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():  # a measure request is small: never read a big one whole
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise _Refused(f"a measure request is at most {MAX_REQUEST_BYTES} bytes", 413)
    return body


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (call once the body is read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise _Refused("bad measure request: JSON nested too deeply") from None
    except ValueError as err:  # also json.JSONDecodeError and bad UTF-8
        raise _Refused(f"bad measure request: {err}") from None


def measure_job(body: Any, max_memory_bytes: int) -> dict[str, Any]:
    """A measure request, validated, as the measuring process's job (without its path).

    Raises:
        _Refused: 400 naming the field at fault; 413 when the inputs could not fit in
            ``max_memory_bytes`` even at one byte per element.
    """
    if not isinstance(body, dict):
        raise _Refused("bad measure request: the body must be a JSON object")
    unknown = set(body) - {"model", "providers", *_FIELDS, "inputs"}
    if unknown:
        raise _Refused(f"bad measure request: unknown field(s) {sorted(unknown)}")
    try:
        job: dict[str, Any] = {"model": check_hash(str(body.get("model", "")))}
    except ValueError as err:
        raise _Refused(f"bad measure request: model: {err}") from None
    providers = body.get("providers", ["CPUExecutionProvider"])
    if not isinstance(providers, list) or not providers or not all(isinstance(p, str) and p for p in providers):
        raise _Refused("bad measure request: providers must be a non-empty list of names")
    job["providers"] = providers
    for name, (low, high, default) in _FIELDS.items():
        value = body.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _Refused(f"bad measure request: {name} must be an integer in [{low}, {high}], got {value!r}")
        job[name] = value
    if job["sessions"] > job["runs"]:
        raise _Refused(f"bad measure request: sessions ({job['sessions']}) must not exceed runs ({job['runs']})")
    job["inputs"] = inputs = body.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise _Refused("bad measure request: inputs must map each input name to its shape, "
                       "e.g. {\"image\": [1, 3, 224, 224]}")
    elements = 0
    for name, shape in inputs.items():
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise _Refused(f"bad measure request: inputs[{name!r}] must be a non-empty list of positive "
                           f"integers, got {shape!r}"[:300])
        if shape[0] != job["batch"]:
            raise _Refused(f"bad measure request: inputs[{name!r}] starts with {shape[0]}, not the batch size "
                           f"{job['batch']}"[:300])
        count = 1
        for d in shape:
            count *= d
        elements += count
    if elements > max_memory_bytes:
        raise _Refused(f"the inputs hold {elements} elements: over the agent's memory limit per measurement "
                       f"({max_memory_bytes} bytes) even at one byte each", 413)
    return job
