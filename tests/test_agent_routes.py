"""The agent's app in this process: its token, its routes and their methods, the upload cap
and deadline, the checker that cannot start, and the children it starts and stops with
serving. Requests are driven through ASGI directly, in one event loop, so that the test
decides when each body's bytes arrive and every child process is closed before the loop is."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from dime_nas.agent import app as agent_app
from dime_nas.agent.app import AgentLimits, create_app
from dime_nas.agent.worker import ChildProcess

TOKEN = "t" * 20
NAME = "ab" * 32  # a well-formed hash that no body sent here has


class _Call:
    """One HTTP request through ASGI whose body arrives as the test feeds it."""

    def __init__(self, app, method: str, path: str, length: int | None = None) -> None:
        headers = [(b"authorization", f"Bearer {TOKEN}".encode())]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        self.scope = {"type": "http", "http_version": "1.1", "method": method, "path": path, "raw_path": path.encode(),
                      "root_path": "", "scheme": "http", "query_string": b"", "headers": headers,
                      "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        self.chunks: asyncio.Queue = asyncio.Queue()
        self.sent: list[dict] = []
        self.task = asyncio.ensure_future(app(self.scope, self._receive, self._send))

    def feed(self, data: bytes, more: bool = True) -> None:
        self.chunks.put_nowait({"type": "http.request", "body": data, "more_body": more})

    def leave(self) -> None:
        """The client closes the connection."""
        self.chunks.put_nowait({"type": "http.disconnect"})

    async def _receive(self) -> dict:
        return await self.chunks.get()  # waits while the test holds the body back

    async def _send(self, message: dict) -> None:
        self.sent.append(message)

    async def answer(self) -> tuple[int, dict[str, str], dict]:
        await self.task
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], headers, json.loads(body) if "json" in headers.get("content-type", "") else {}


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _request(app, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], dict]:
    call = _Call(app, method, path, length=len(body))
    call.feed(body, more=False)
    return await call.answer()


@contextlib.asynccontextmanager
async def _serving(app):
    """The app's startup before, its shutdown after, as a server runs them (ASGI lifespan)."""
    events: asyncio.Queue = asyncio.Queue()
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    events.put_nowait({"type": "lifespan.startup"})
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}}, events.get, send))
    while not sent:
        await asyncio.sleep(0.01)
    assert sent[0]["type"] == "lifespan.startup.complete", sent
    try:
        yield
    finally:
        events.put_nowait({"type": "lifespan.shutdown"})
        await task


def _run(scenario, timeout_s: float = 20):
    return asyncio.run(asyncio.wait_for(scenario, timeout_s))


def test_the_agent_needs_a_token(tmp_path):
    with pytest.raises(ValueError, match="^the agent needs a non-empty token$"):
        create_app("", tmp_path)


def test_each_route_answers_its_own_methods_only(tmp_path):
    limits = AgentLimits(max_model_bytes=12345, max_memory_bytes=67890, timeout_s=7, upload_timeout_s=8,
                         max_uploads=3, queue_limit=4)
    wrong = [("POST", "/v1/device"), ("PUT", "/v1/device"), ("DELETE", "/v1/device"),
             ("GET", f"/v1/models/{NAME}"), ("POST", f"/v1/models/{NAME}"), ("DELETE", f"/v1/models/{NAME}"),
             ("GET", "/v1/measure"), ("PUT", "/v1/measure"), ("HEAD", "/v1/measure")]

    async def scenario() -> tuple:
        app = create_app(TOKEN, tmp_path, limits)  # not served: no children are started
        device = await _request(app, "GET", "/v1/device")
        missing = await _request(app, "HEAD", f"/v1/models/{NAME}")
        return device, missing, {(m, p): (await _request(app, m, p))[0] for m, p in wrong}

    (status, _, description), (missing, _, _), refused = _run(scenario())
    assert status == 200 and description["limits"] == dataclasses.asdict(limits)
    assert missing == 404
    assert refused == {k: 405 for k in wrong}


def test_a_malformed_model_name_is_refused_400_saying_what_a_name_is(tmp_path):
    async def scenario() -> list:
        app = create_app(TOKEN, tmp_path)
        return [await _request(app, method, "/v1/models/" + name, b"x")
                for method in ("PUT", "HEAD") for name in ("AB" * 32, "abc")]

    for status, _, body in _run(scenario()):
        assert status == 400
        assert body in ({}, {"error": "a model is named by the SHA-256 of its bytes: 64 lower-case hex digits"})
    assert _run(scenario())[1][2]["error"].startswith("a model is named by the SHA-256")


@pytest.mark.parametrize("max_uploads", [1, 2])
def test_uploads_in_progress_are_capped_and_a_finished_one_frees_its_place(tmp_path, max_uploads):
    async def scenario() -> None:
        app = create_app(TOKEN, tmp_path, AgentLimits(max_uploads=max_uploads))

        async def hold(n: int) -> list[_Call]:
            calls = [_Call(app, "PUT", f"/v1/models/{NAME}", length=8) for _ in range(n)]
            for call in calls:
                call.feed(b"1234")  # half of each body: all n are now uploading
            await _turns()
            assert not any(c.task.done() for c in calls)
            return calls

        async def finish(calls: list[_Call]) -> None:
            for call in calls:
                call.feed(b"5678", more=False)  # the rest; the hash does not match, so no checker runs
                status, _, body = await call.answer()
                assert status == 400 and body["error"].startswith("hash mismatch")

        for _ in range(2):  # twice: every finished upload gave its place back
            held = await hold(max_uploads)
            one_more = _Call(app, "PUT", f"/v1/models/{NAME}", length=8)
            status, headers, body = await one_more.answer()
            assert status == 503 and headers.get("connection") == "close"
            assert body == {"error": f"busy: {max_uploads} upload(s) in progress (limit {max_uploads})"}
            await finish(held[:1])
            again = await hold(1)  # the place the finished one left
            await finish(held[1:] + again)

    _run(scenario())


def test_an_upload_that_stalls_is_answered_408_at_the_upload_deadline(tmp_path):
    async def scenario() -> tuple[float, tuple]:
        app = create_app(TOKEN, tmp_path, AgentLimits(upload_timeout_s=0.3))
        call = _Call(app, "PUT", f"/v1/models/{NAME}", length=8)
        call.feed(b"1234")
        start = time.monotonic()
        answer = await call.answer()
        return time.monotonic() - start, answer

    waited, (status, headers, body) = _run(scenario(), 10)
    assert status == 408 and headers.get("connection") == "close" and body["bytes_read"] == 4
    assert "0.3 s upload deadline" in body["error"] and 0.25 <= waited < 5


class _ChecklessChild(ChildProcess):
    """The agent's children, except that the checker's process exits at once (unknown kind)."""

    def __init__(self, kind: str, *args: str, name: str) -> None:
        super().__init__("no-such-kind" if kind == "check" else kind, *args, name=name)


def test_an_upload_whose_checker_cannot_start_is_answered_503_naming_the_checker(tmp_path, monkeypatch):
    monkeypatch.setattr(agent_app, "ChildProcess", _ChecklessChild)
    data = b"not checked"
    name = hashlib.sha256(data).hexdigest()

    async def scenario() -> tuple:
        app = create_app(TOKEN, tmp_path)
        async with _serving(app):  # its children are closed before the loop is
            return await _request(app, "PUT", f"/v1/models/{name}", data)

    status, _, body = _run(scenario(), 60)
    # (its exit code, 2, is at times reported as 255 here: asyncio's child watcher finds the process
    # already reaped after earlier tests' event loops; the name is what this test is about)
    assert status == 503 and body["error"].startswith("the ONNX checker did not start (exit code ")
    assert not (tmp_path / "models" / f"{name}.onnx").exists()  # nothing stored unchecked


def _agent_children() -> dict[int, str]:
    """This process's child processes running the agent's worker: pid -> kind."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid():
                continue
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if "dime_nas.agent.worker" in argv:
            found[int(entry.name)] = argv[argv.index("dime_nas.agent.worker") + 1]
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc")
def test_serving_starts_the_measuring_and_checking_processes_and_stopping_ends_them(tmp_path):
    before = set(_agent_children())

    async def scenario() -> set[int]:
        async with _serving(create_app(TOKEN, tmp_path)):
            deadline = time.monotonic() + 60
            while sorted(k for p, k in _agent_children().items() if p not in before) != ["check", "measure"]:
                assert time.monotonic() < deadline, "the agent's children did not start with it"
                await asyncio.sleep(0.1)
            return set(_agent_children()) - before

    started = _run(scenario(), 90)
    assert len(started) == 2 and not started & set(_agent_children())  # killed and reaped at shutdown


def _identity_model() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def test_a_checked_model_is_stored_answered_201_naming_it_and_found_by_head(tmp_path):
    data = _identity_model()
    name = hashlib.sha256(data).hexdigest()

    async def scenario() -> tuple:
        app = create_app(TOKEN, tmp_path)
        async with _serving(app):
            stored = await _request(app, "PUT", f"/v1/models/{name}", data)
            return stored, await _request(app, "HEAD", f"/v1/models/{name}")

    (status, headers, body), (found, _, _) = _run(scenario(), 120)
    assert status == 201 and body == {"model": name, "stored": True} and "connection" not in headers
    assert found == 200


def _agent(app):
    """The _Agent behind an app made by create_app (its routes' endpoints are its methods)."""
    return app.app.routes[0].endpoint.__self__


class _HungChecker:
    """A checker that never answers: only the deadline the agent gives it ends the wait."""

    async def run(self, job: dict, timeout_s: float) -> dict:
        try:
            await asyncio.wait_for(asyncio.Event().wait(), timeout_s)
        except TimeoutError:
            raise agent_app.PastDeadline() from None
        raise AssertionError("unreachable")


def test_a_check_that_does_not_finish_in_time_refuses_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(agent_app, "CHECK_TIMEOUT_S", 0.2)
    data = b"checked for ever"
    name = hashlib.sha256(data).hexdigest()

    async def scenario() -> tuple:
        app = create_app(TOKEN, tmp_path)  # not served: its checker is the hung one below
        _agent(app).checker = _HungChecker()
        return await _request(app, "PUT", f"/v1/models/{name}", data)

    status, _, body = _run(scenario(), 10)
    assert status == 400 and body["error"] == "not a valid ONNX model: the ONNX checker did not finish within 0.2 s"


def test_upload_errors_close_the_connection_only_when_the_body_was_not_read(tmp_path):
    """408 and 413 are answered before the body is read: the connection is closed rather than
    drained; a 400 (the body read, its hash wrong) keeps it."""
    async def scenario() -> tuple:
        app = create_app(TOKEN, tmp_path, AgentLimits(max_model_bytes=10))
        too_big = await _request(app, "PUT", f"/v1/models/{NAME}", b"x" * 11)
        mismatch = await _request(app, "PUT", f"/v1/models/{NAME}", b"x" * 5)
        return too_big, mismatch

    (big, big_headers, _), (bad, bad_headers, body) = _run(scenario())
    assert big == 413 and big_headers.get("connection") == "close"
    assert bad == 400 and body["error"].startswith("hash mismatch") and "connection" not in bad_headers


def test_a_client_that_leaves_mid_upload_or_mid_request_is_answered_499(tmp_path):
    async def scenario() -> tuple:
        app = create_app(TOKEN, tmp_path)
        upload = _Call(app, "PUT", f"/v1/models/{NAME}", length=8)
        upload.feed(b"1234")
        upload.leave()
        measure = _Call(app, "POST", "/v1/measure", length=100)
        measure.feed(b'{"model": ')
        measure.leave()
        return await upload.answer(), await measure.answer()

    (status, _, body), (measure_status, _, measure_body) = _run(scenario())
    assert (status, body) == (499, {"error": "the client left during the upload"})
    assert (measure_status, measure_body) == (499, {"error": "the client left"})


def test_a_measure_request_that_stalls_is_answered_408_and_closed(tmp_path):
    async def scenario() -> tuple:
        app = create_app(TOKEN, tmp_path, AgentLimits(upload_timeout_s=0.3))
        call = _Call(app, "POST", "/v1/measure", length=100)
        call.feed(b'{"model": ')
        return await call.answer()

    status, headers, body = _run(scenario(), 10)
    assert (status, body) == (408, {"error": "request not read within 0.3 s"}) and headers.get("connection") == "close"


def test_measure_refusals_close_the_connection_only_for_a_body_too_big_to_read(tmp_path):
    async def scenario() -> tuple:
        app = create_app(TOKEN, tmp_path)
        big = await _request(app, "POST", "/v1/measure", b" " * (agent_app.MAX_REQUEST_BYTES + 1))
        bad = await _request(app, "POST", "/v1/measure", b"{not json")
        missing = await _request(app, "POST", "/v1/measure", json.dumps(
            {"model": NAME, "inputs": {"x": [1, 2]}}).encode())
        return big, bad, missing

    (big, big_headers, _), (bad, bad_headers, _), (missing, missing_headers, body) = _run(scenario())
    assert big == 413 and big_headers.get("connection") == "close"
    assert bad == 400 and "connection" not in bad_headers
    assert (missing, body) == (404, {"error": f"model {NAME} is not stored here: PUT /v1/models/{NAME} first"})
    assert "connection" not in missing_headers  # read whole: the connection serves the next request


@pytest.mark.parametrize("client_leaves", [False, True])
def test_a_measurement_is_answered_with_its_model_and_batch_and_told_when_the_client_leaves(
        tmp_path, monkeypatch, client_leaves):
    """The measurement itself is scripted: it reports whether the agent told it that the client left."""
    seen = {}

    async def measure(self, job: dict, client_gone: asyncio.Future) -> dict:
        seen["job"] = job
        done, _ = await asyncio.wait({client_gone}, timeout=0.5)
        return {"median_ms": 1.5, "client_left": bool(done) and client_gone.exception() is None}

    monkeypatch.setattr(agent_app._Measurements, "measure", measure)

    async def scenario() -> tuple:
        app = create_app(TOKEN, tmp_path)
        model = _agent(app).store.path(NAME)
        model.write_bytes(b"stored")
        call = _Call(app, "POST", "/v1/measure")
        call.feed(json.dumps({"model": NAME, "batch": 2, "inputs": {"x": [2, 3]}}).encode(), more=False)
        if client_leaves:
            await _turns()
            call.leave()
        return await call.answer(), str(model)

    (status, _, body), path = _run(scenario())
    assert status == 200 and body == {"median_ms": 1.5, "client_left": client_leaves, "model": NAME, "batch": 2}
    assert seen["job"]["path"] == path and seen["job"]["inputs"] == {"x": [2, 3]}
