"""The agent's HTTP API (Starlette): device description, model store, measurement.

- Every request must carry ``Authorization: Bearer TOKEN``; anything else gets 401
  before any work is done (the comparison is constant-time).
- ``PUT /v1/models/{sha256}``: the body is streamed to disk and reading stops at the
  size limit (413); the hash is recomputed (400 on mismatch) and the ONNX checker run
  (400 with its message).
- ``POST /v1/measure``: one measurement at a time; up to ``queue_limit`` requests wait
  their turn, more get 503; each measurement is stopped after ``timeout_s`` (504).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .device import describe_device
from .store import ModelStore, UploadError, check_hash
from .timing import MeasureTimeout, measure_onnx

MAX_REQUEST_BYTES = 64 * 1024  # a measure request's JSON body
MAX_INPUT_ELEMENTS = 64 * 1024**2  # a fixed input of at most 64 M elements (256 MB of float32)
_LIMITS = {"threads": (1, 1024), "batch": (1, 65536), "warmup": (0, 100_000), "runs": (1, 1_000_000),
           "sessions": (1, 1000)}


class _TokenGate:
    """ASGI middleware: 401 unless the bearer token matches (checked before the app runs)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await JSONResponse({"error": "missing or wrong token"}, status_code=401,
                                   headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _MeasureQueue:
    """One measurement at a time; at most ``limit`` requests waiting behind it."""

    def __init__(self, limit: int) -> None:
        self.limit, self.waiting = limit, 0
        self.lock = asyncio.Lock()  # the queue, in the event loop
        self._running = threading.Lock()  # the guarantee, in the worker threads (a dropped client cannot break it)

    def run_alone(self, fn: Any, *args: Any) -> Any:
        with self._running:
            return fn(*args)


def create_app(token: str, store_dir: str | Path, max_model_bytes: int, *, queue_limit: int = 8,
               timeout_s: float = 600.0, labels: dict[str, str] | None = None) -> Starlette:
    """The agent as an ASGI app (served by uvicorn; tests may serve it the same way)."""
    if not token:
        raise ValueError("the agent needs a non-empty token")
    store = ModelStore(store_dir, max_model_bytes)
    queue = _MeasureQueue(queue_limit)

    async def device(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(describe_device, labels))

    async def model(request: Request) -> Response:
        try:
            sha = check_hash(request.path_params["sha256"])
        except ValueError as err:
            return _error(400, str(err))
        if request.method == "HEAD":
            return Response(status_code=200 if store.has(sha) else 404)
        length = request.headers.get("content-length")
        try:
            await store.put(sha, request.stream(), int(length) if length and length.isdigit() else None)
        except UploadError as err:
            # 413 before the body was read whole: close the connection rather than drain it
            headers = {"Connection": "close"} if err.status == 413 else None
            return JSONResponse({"error": str(err), "bytes_read": err.bytes_read}, status_code=err.status,
                                headers=headers)
        return JSONResponse({"model": sha, "stored": True}, status_code=201)

    async def measure(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():  # a measure request is small: never read a big one whole
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                return JSONResponse({"error": f"a measure request is at most {MAX_REQUEST_BYTES} bytes"},
                                    status_code=413, headers={"Connection": "close"})
        try:
            spec = _measure_spec(json.loads(body))
        except ValueError as err:  # also json.JSONDecodeError
            return _error(400, f"bad measure request: {err}")
        if not store.has(spec["model"]):
            return _error(404, f"model {spec['model']} is not stored here: PUT /v1/models/{spec['model']} first")
        if queue.waiting >= queue.limit:
            return _error(503, f"busy: {queue.waiting} measurement(s) already waiting (limit {queue.limit})")
        queue.waiting += 1
        t_queued = time.monotonic()
        try:
            await queue.lock.acquire()
        finally:
            queue.waiting -= 1
        try:
            started = time.monotonic()
            result = await run_in_threadpool(
                queue.run_alone, measure_onnx, str(store.path(spec["model"])), spec["providers"], spec["threads"],
                spec["warmup"], spec["runs"], spec["inputs"], timeout_s, spec["sessions"])
            finished = time.monotonic()
        except MeasureTimeout as err:
            return _error(504, str(err))
        except ValueError as err:
            return _error(400, str(err))
        finally:
            queue.lock.release()
        result.update({"model": spec["model"], "batch": spec["batch"], "queued_s": started - t_queued,
                       "interval": [started, finished]})  # agent monotonic clock: shows one at a time
        return JSONResponse(result)

    routes = [Route("/v1/device", device, methods=["GET"]),
              Route("/v1/models/{sha256}", model, methods=["PUT", "HEAD"]),
              Route("/v1/measure", measure, methods=["POST"])]
    app = Starlette(routes=routes)
    return _TokenGate(app, token)  # type: ignore[return-value]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _measure_spec(body: Any) -> dict[str, Any]:
    """Validate a measure request; ValueError names the field."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = set(body) - {"model", "providers", "threads", "batch", "warmup", "runs", "sessions", "inputs"}
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    spec: dict[str, Any] = {"model": check_hash(str(body.get("model", "")))}
    providers = body.get("providers", ["CPUExecutionProvider"])
    if not isinstance(providers, list) or not providers or not all(isinstance(p, str) and p for p in providers):
        raise ValueError("providers must be a non-empty list of names")
    spec["providers"] = providers
    for name, (low, high) in _LIMITS.items():
        value = body.get(name, {"threads": 1, "batch": 1, "warmup": 10, "runs": 50, "sessions": 1}[name])
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        spec[name] = value
    if spec["sessions"] > spec["runs"]:
        raise ValueError(f"sessions ({spec['sessions']}) must not exceed runs ({spec['runs']})")
    inputs = body.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise ValueError("inputs must map each input name to its shape, e.g. {\"image\": [1, 3, 224, 224]}")
    for name, shape in inputs.items():
        if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                   for d in shape)):
            raise ValueError(f"inputs[{name!r}] must be a list of positive integers, got {shape!r}")
        elements = 1
        for d in shape:
            elements *= d
        if elements > MAX_INPUT_ELEMENTS:
            raise ValueError(f"inputs[{name!r}] has {elements} elements, over the {MAX_INPUT_ELEMENTS} limit")
        if shape[0] != spec["batch"]:
            raise ValueError(f"inputs[{name!r}] starts with {shape[0]}, not the batch size {spec['batch']}")
    spec["inputs"] = inputs
    return spec
