"""The measurement agent on loopback: auth, upload limits and checks, one-at-a-time
measurement, timeouts, and that it keeps serving after every bad request."""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent_fixtures import REPO, loopback_agent
from dime_nas.agent.server import AgentConfigError, read_token

LIMIT_MB = 1


def matmul_model(layers: int = 4, dim: int = 128, tokens: int = 64, seed: int = 0) -> bytes:
    """A chain of ``layers`` (tokens x dim) @ (dim x dim) MatMuls + Relu: MACs known, size ~ layers * dim^2 * 4."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "image"
    for i in range(layers):
        w = numpy_helper.from_array((rng.standard_normal((dim, dim)) / dim**0.5).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["embedding"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                             ["batch", tokens, dim])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", tokens, dim])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def measure_body(model: str, runs: int = 300, **changes) -> dict:
    body = {"model": model, "providers": ["CPUExecutionProvider"], "threads": 1, "batch": 1, "warmup": 2,
            "runs": runs, "inputs": {"image": [1, 64, 128]}}
    return {**body, **changes}


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    root = tmp_path_factory.mktemp("agent")
    with loopback_agent(root, "--max-model-mb", str(LIMIT_MB), "--queue-limit", "2", "--timeout-s", "3",
                        "--label", "board=test-a") as a:
        yield a


@pytest.fixture(scope="module")
def stored(agent):
    data = matmul_model()
    with agent.client() as c:
        assert c.put(f"/v1/models/{sha(data)}", content=data).status_code == 201
    return sha(data)


HEAVY = ("torch", "torchvision", "open_clip", "timm", "optuna", "sklearn", "fvcore")


def _modules_after(code: str, *args: str) -> list[str]:
    """The modules a fresh interpreter holds after running ``code`` (which prints nothing itself)."""
    code += "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout)


def test_agent_import_path_never_imports_torch_nor_the_cli(tmp_path):
    # what `python -m dime_nas.agent` loads: the server, the app, the measuring process, the timing code
    modules = _modules_after("import sys\n"
                             "import dime_nas.agent.server, dime_nas.agent.worker, dime_nas.agent.timing\n"
                             "from dime_nas.agent.app import create_app\n"
                             "create_app('t' * 20, sys.argv[1])\n", str(tmp_path))
    assert [m for m in modules if m.split(".")[0] in HEAVY] == []
    toolkit = [m for m in modules if m.startswith("dime_nas") and not m.startswith("dime_nas.agent")]
    # fs and errors: standard library only; never dime_nas.cli
    assert set(toolkit) <= {"dime_nas", "dime_nas.fs", "dime_nas.errors"}
    assert "starlette" in modules and "onnxruntime" not in modules  # the agent process needs no onnxruntime yet
    # `dime-nas agent` parses its options without the search tools too
    modules = _modules_after("import dime_nas.cli as cli\ncli._parser().parse_args(['agent', '--token-file', 'x'])")
    assert [m for m in modules if m.split(".")[0] in HEAVY] == []


def test_device_description(agent):
    with agent.client() as c:
        d = c.get("/v1/device").json()
    import onnxruntime as ort

    assert d["onnxruntime"] == ort.__version__ and "CPUExecutionProvider" in d["providers_available"]
    assert d["cpu_count"] >= 1 and d["memory_bytes"] > 0 and d["processor"] and d["platform"]
    assert d["labels"] == {"board": "test-a"}


@pytest.mark.parametrize("token", ["", "wrong-token-of-some-length"])
def test_without_the_right_token_every_request_gets_401_and_does_nothing(agent, token):
    data = matmul_model(layers=1, seed=7)
    with agent.client(token) as c:
        assert c.get("/v1/device").status_code == 401
        assert c.head(f"/v1/models/{sha(data)}").status_code == 401
        r = c.put(f"/v1/models/{sha(data)}", content=data)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = c.post("/v1/measure", json=measure_body(sha(data)))
        assert r.status_code == 401 and r.json() == {"error": "missing or wrong token"}
    with agent.client() as c:  # nothing was stored
        assert c.head(f"/v1/models/{sha(data)}").status_code == 404
    assert not list(agent.store.rglob(f"{sha(data)}*"))
    assert agent.answers()


def test_upload_once_then_head_says_stored(agent):
    data = matmul_model(layers=2, seed=3)
    with agent.client() as c:
        assert c.head(f"/v1/models/{sha(data)}").status_code == 404
        assert c.put(f"/v1/models/{sha(data)}", content=data).status_code == 201
        assert c.head(f"/v1/models/{sha(data)}").status_code == 200
    assert (agent.store / "models" / f"{sha(data)}.onnx").read_bytes() == data


def _raw_put(agent, name: str, headers: list[str], body_chunks: list[bytes]) -> tuple[int, dict]:
    """PUT over a raw socket; the body is NOT finished: a 413 must come before it ends."""
    host, port = agent.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        head = [f"PUT /v1/models/{name} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {agent.token}", *headers]
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        for chunk in body_chunks:
            s.sendall(chunk)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            part = s.recv(65536)  # a server waiting for the rest of the body would time out here
            if not part:
                break
            reply += part
    status = int(reply.split(b" ", 2)[1])
    return status, json.loads(reply.split(b"\r\n\r\n", 1)[1])


def test_oversize_upload_413_without_reading_it_whole(agent):
    limit = LIMIT_MB * 1024**2
    name = "ab" * 32
    # declared too large: refused before a byte of the body is read (none is sent)
    status, body = _raw_put(agent, name, [f"Content-Length: {10 * limit}"], [])
    assert status == 413 and body["bytes_read"] == 0
    # chunked, length unknown, and the body never ends: reading stops just past the limit
    chunk = 64 * 1024
    frame = f"{chunk:x}\r\n".encode() + b"\0" * chunk + b"\r\n"
    status, body = _raw_put(agent, name, ["Transfer-Encoding: chunked"], [frame] * (limit // chunk + 16))
    assert status == 413 and limit < body["bytes_read"] <= limit + 4 * chunk  # the server reads ~64 KB at a time
    assert "limit" in body["error"]
    staged = [p for p in (agent.store / "models").iterdir() if p.name.startswith(".")]  # temporary upload files
    assert staged == [] and not (agent.store / "models" / f"{name}.onnx").exists()
    assert agent.answers()


def test_corrupt_model_400_with_the_checkers_message(agent):
    garbage = b"this is not an onnx model" * 10
    bad_graph = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["image", "nowhere"], ["embedding"])], "bad",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1])]),
        opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    with agent.client() as c:
        for data in (garbage, bad_graph):
            r = c.put(f"/v1/models/{sha(data)}", content=data)
            assert r.status_code == 400 and r.json()["error"].startswith("not a valid ONNX model: ")
            assert c.head(f"/v1/models/{sha(data)}").status_code == 404
        r = c.put(f"/v1/models/{sha(bad_graph)}", content=bad_graph)
        assert "nowhere" in r.json()["error"]  # the checker names the dangling input
    assert agent.answers()


def test_hash_mismatch_400_and_only_hash_names(agent):
    data = matmul_model(layers=1, seed=11)
    other = "0" * 64
    with agent.client() as c:
        r = c.put(f"/v1/models/{other}", content=data)
        assert r.status_code == 400 and "hash mismatch" in r.json()["error"]
        assert c.head(f"/v1/models/{other}").status_code == 404
        for name in ("ABC", "..%2F..%2Fevil", "a" * 63 + "g"):
            assert c.put(f"/v1/models/{name}", content=data).status_code in (400, 404)
    stored_names = [p.name for p in (agent.store / "models").iterdir()]
    assert all(len(n) == len("0" * 64 + ".onnx") and n.endswith(".onnx") for n in stored_names)
    assert not (agent.store.parent / "evil").exists() and agent.answers()


def test_bad_measure_requests_400_or_404(agent, stored):
    with agent.client() as c:
        assert c.post("/v1/measure", content=b"{not json").status_code == 400
        assert c.post("/v1/measure", json=measure_body(stored, runs=0)).status_code == 400
        r = c.post("/v1/measure", json=measure_body(stored, runs=2, sessions=3))
        assert r.status_code == 400 and "sessions (3) must not exceed runs (2)" in r.json()["error"]
        assert c.post("/v1/measure", json=measure_body(stored, inputs={"x": [1, 2]})).status_code == 400
        r = c.post("/v1/measure", json=measure_body(stored, providers=["NoSuchExecutionProvider"]))
        assert r.status_code == 400 and "none of the providers" in r.json()["error"]
        assert c.post("/v1/measure", json=measure_body("1" * 64)).status_code == 404
        assert c.post("/v1/measure", content=b" " * 200_000).status_code == 413
    assert agent.answers()


def _concurrent_measures(agent, bodies: list[dict]) -> list:
    barrier, results = threading.Barrier(len(bodies)), [None] * len(bodies)

    def go(i: int) -> None:
        with agent.client() as c:
            barrier.wait()
            results[i] = c.post("/v1/measure", json=bodies[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_measurements_run_one_at_a_time(agent, stored):
    results = _concurrent_measures(agent, [measure_body(stored)] * 3)  # 1 running + 2 waiting: all accepted
    assert [r.status_code for r in results] == [200] * 3
    intervals = sorted(r.json()["interval"] for r in results)
    for (_, end), (start, _) in zip(intervals, intervals[1:]):
        assert start >= end  # the next began only after the previous ended
    assert max(r.json()["queued_s"] for r in results) > 0
    assert agent.answers()


def test_queue_limit_answers_503(agent, stored):
    results = _concurrent_measures(agent, [measure_body(stored, runs=600)] * 6)
    codes = sorted(r.status_code for r in results)
    assert 503 in codes and set(codes) <= {200, 503} and codes.count(200) >= 3
    assert "busy" in next(r for r in results if r.status_code == 503).json()["error"]
    assert agent.answers()


def test_measurement_past_the_timeout_is_stopped_504(agent, stored):
    with agent.client() as c:
        r = c.post("/v1/measure", json=measure_body(stored, runs=1_000_000))
        assert r.status_code == 504 and "3 s deadline" in r.json()["error"]
        assert c.post("/v1/measure", json=measure_body(stored, runs=5)).status_code == 200
    assert agent.answers()


def test_refuses_to_start_without_a_private_token_file(tmp_path):
    with pytest.raises(AgentConfigError, match="not found"):
        read_token(tmp_path / "missing")
    path = tmp_path / "token"
    path.write_text("x" * 32)
    path.chmod(0o644)
    with pytest.raises(AgentConfigError, match="chmod 600"):
        read_token(path)
    path.chmod(0o600)
    assert read_token(path) == "x" * 32
    path.write_text("short")
    with pytest.raises(AgentConfigError, match="at least 16"):
        read_token(path)
    out = subprocess.run([sys.executable, "-m", "dime_nas.agent", "--token-file", str(tmp_path / "missing")],
                         capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "token file not found" in out.stderr


def test_agent_binds_to_loopback_by_default():
    from dime_nas.cli import _parser

    assert _parser().parse_args(["agent", "--token-file", "t"]).host == "127.0.0.1"


def test_a_websocket_is_closed_with_policy_violation_before_any_app_code_runs():
    """The API has no WebSocket route; a connection attempt (even with the right token) is closed
    with 1008 (policy violation) by the token gate, and the app behind it never sees it."""
    import asyncio

    from dime_nas.agent.app import _TokenGate

    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope["type"])

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "websocket.connect"}

    gate = _TokenGate(app, "tok")
    scope = {"type": "websocket", "headers": [(b"authorization", b"Bearer tok")]}
    asyncio.run(gate(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}] and reached == []
    asyncio.run(gate({"type": "http", "headers": [(b"authorization", b"Bearer tok")]}, receive, send))
    assert reached == ["http"]  # the right token over HTTP does reach the app


@pytest.mark.parametrize("field", ["max_model_bytes", "max_memory_bytes", "timeout_s", "upload_timeout_s",
                                   "max_uploads", "queue_limit"])
def test_each_agent_limit_is_checked_at_its_edge(field):
    """Every limit must be positive (1 is allowed, 0 refused); the queue may be empty (0), not negative."""
    from dime_nas.agent.app import AgentLimits

    lowest = 0 if field == "queue_limit" else 1
    assert getattr(AgentLimits(**{field: lowest}), field) == lowest
    with pytest.raises(ValueError, match="agent limits must be positive"):
        AgentLimits(**{field: lowest - 1})
