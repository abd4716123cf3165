"""The agent's limits on loopback, each probed with a small crafted model or request: the
measurement deadline, the memory limit, onnxruntime's telemetry, what is read before the
token is checked, stalled and concurrent uploads, clear 4xx answers, the checker off the
event loop, and clients that leave."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent_fixtures import REPO, loopback_agent
from dime_nas.agent.app import _TokenGate
from dime_nas.agent.store import check_hash
from test_agent import matmul_model, measure_body, sha

ONNXRUNTIME_CI_MARKERS = {"CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
                          "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER",
                          "SYSTEM_TEAMFOUNDATIONCOLLECTIONURI"}
DEADLINE_S = 2.0
MARGIN_S = 2.5  # past the deadline: the kill, the reply, a loaded 2-core machine


def graph_model(nodes, inputs, outputs, initializers=(), domains=()) -> bytes:
    graph = helper.make_graph(nodes, "probe", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    *(helper.make_opsetid(d, 1) for d in domains)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def folding_model(matmuls: int = 50) -> bytes:
    """A few hundred bytes whose 2048x2048 constant MatMuls onnxruntime folds while creating the session."""
    c = [numpy_helper.from_array(np.array(1e-3, np.float32), "v"),
         numpy_helper.from_array(np.array([2048, 2048], np.int64), "shape")]
    nodes = [helper.make_node("Expand", ["v", "shape"], ["m0"])]
    nodes += [helper.make_node("MatMul", [f"m{i}", "m0"], [f"m{i + 1}"]) for i in range(matmuls)]
    nodes += [helper.make_node("ReduceSum", [f"m{matmuls}"], ["s"], keepdims=0), helper.make_node("Add", ["x", "s"], ["y"])]
    return graph_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])], c)


def summing_model(n_inputs: int = 1) -> bytes:
    """Inputs x0..x{n-1} of shape [batch, n], each summed: its inputs are all it holds."""
    names = [f"x{i}" for i in range(n_inputs)]
    nodes = [helper.make_node("ReduceSum", [x], [f"s{x}"], keepdims=0) for x in names]
    nodes.append(helper.make_node("Sum", [f"s{x}" for x in names], ["y"]))
    return graph_model(nodes, [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "n"]) for x in names],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])


def constant_of_shape_model(elements: int = 250_000_000) -> bytes:
    """About 200 bytes asking for ``elements`` float32 (1 GB for 250 M) when run."""
    shape = numpy_helper.from_array(np.array([elements], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0), helper.make_node("Add", ["x", "s"], ["y"])]
    return graph_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [shape])


def custom_op_model() -> bytes:
    return graph_model([helper.make_node("Foo", ["x"], ["y"], domain="com.example")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], domains=["com.example"])


def many_nodes_model(nodes: int) -> bytes:
    """A chain of ``nodes`` Relus: the ONNX checker takes about a second per 200,000."""
    chain = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(nodes)]
    return graph_model(chain, [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
                       [helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, [1])])


def put(agent, data: bytes) -> str:
    with agent.client() as c:
        r = c.put(f"/v1/models/{sha(data)}", content=data)
        assert r.status_code == 201, r.text
    return sha(data)


def timed_measure(agent, body: dict):
    with agent.client() as c:
        start = time.monotonic()
        r = c.post("/v1/measure", json=body)
        return r, time.monotonic() - start


def children(pid: int, kind: str) -> set[int]:
    """Live child processes of ``pid`` running ``dime_nas.agent.worker KIND`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and kind.encode() in argv:
            found.add(int(stat.parent.name))
    return found


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def raw_connection(agent, head: list[str], token: bool = True) -> socket.socket:
    """A connection that has sent the request line and headers, and nothing of the body yet."""
    host, port = agent.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    lines = [*head, f"Host: {host}", *([f"Authorization: Bearer {agent.token}"] if token else [])]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return s


def read_reply(s: socket.socket) -> tuple[int, dict, bool]:
    """(status, JSON body, whether the server then closed the connection)."""
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        part = s.recv(65536)
        if not part:
            break
        reply += part
    try:
        closed = s.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        closed = True
    return int(reply.split(b" ", 2)[1]), json.loads(reply.split(b"\r\n\r\n", 1)[1]), closed


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    """Deadlines of 2 s, room for the 1 GB of inputs the huge-input probe asks for."""
    with loopback_agent(tmp_path_factory.mktemp("tight"), "--timeout-s", str(DEADLINE_S), "--upload-timeout-s",
                        str(DEADLINE_S), "--max-uploads", "2", "--max-memory-mb", "1280", "--max-model-mb", "8") as a:
        yield a


@pytest.fixture(scope="module")
def roomy(tmp_path_factory):
    """A 512 MB memory limit and a deadline no probe reaches."""
    with loopback_agent(tmp_path_factory.mktemp("roomy"), "--timeout-s", "60", "--max-memory-mb", "512",
                        "--queue-limit", "2", "--max-model-mb", "64") as a:
        yield a


@pytest.fixture(scope="module")
def small_model(tight, roomy):
    data = matmul_model(layers=2, seed=5)
    put(tight, data)
    return put(roomy, data)


def test_the_deadline_covers_constant_folding_at_session_creation(tight, small_model):
    assert timed_measure(tight, measure_body(small_model, runs=5))[0].status_code == 200  # the process is up
    measuring = children(tight.process.pid, "measure")
    r, seconds = timed_measure(tight, {**measure_body(put(tight, folding_model()), runs=5), "inputs": {"x": [1]}})
    assert r.status_code == 504 and "deadline" in r.json()["error"]
    assert DEADLINE_S - 0.1 <= seconds <= DEADLINE_S + MARGIN_S
    assert len(measuring) == 1 and not measuring & children(tight.process.pid, "measure")  # it was killed
    assert timed_measure(tight, measure_body(small_model, runs=5))[0].status_code == 200


def test_the_deadline_covers_building_huge_inputs(tight, small_model):
    assert timed_measure(tight, measure_body(small_model, runs=5))[0].status_code == 200
    four = put(tight, summing_model(4))
    body = {**measure_body(four), "inputs": {f"x{i}": [1, 64 * 1024**2] for i in range(4)}}  # 1 GB of float32
    r, seconds = timed_measure(tight, body)
    assert r.status_code == 504 and "building its inputs" in r.json()["error"]
    assert seconds <= DEADLINE_S + MARGIN_S
    assert timed_measure(tight, measure_body(small_model, runs=5))[0].status_code == 200


def test_a_model_that_allocates_too_much_fails_422_and_the_agent_stays_small(roomy, small_model):
    r, _ = timed_measure(roomy, {**measure_body(put(roomy, constant_of_shape_model())), "inputs": {"x": [1]}})
    assert r.status_code == 422 and "more memory than the agent's 512 MB limit" in r.json()["error"]
    assert peak_rss_mb(roomy.process.pid) < 300  # the agent itself never held the model's gigabyte
    assert timed_measure(roomy, measure_body(small_model, runs=5))[0].status_code == 200


def test_inputs_over_the_memory_limit_are_refused_413_before_anything_is_allocated(roomy, small_model):
    many = {f"x{i}": [1, 4 * 1024**2] for i in range(200)}  # 800 M elements, named in a request of 5 KB
    r, seconds = timed_measure(roomy, {**measure_body(small_model), "inputs": many})
    assert r.status_code == 413 and "memory limit" in r.json()["error"] and seconds < 5
    one = put(roomy, summing_model(1))  # 200 M elements fit at one byte each, not as float32: the process refuses
    r, _ = timed_measure(roomy, {**measure_body(one), "inputs": {"x0": [1, 200 * 1024**2]}})
    assert r.status_code == 413 and "the inputs take 838860800 bytes" in r.json()["error"]
    assert timed_measure(roomy, measure_body(small_model, runs=5))[0].status_code == 200


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_no_telemetry_is_written_by_the_agent_or_a_local_measurement(tmp_path):
    # the children start without what importing dime_nas set here, and without the CI markers
    # (CI, GITHUB_ACTIONS, ...) under which onnxruntime keeps its telemetry off by itself
    bare = {k: v for k, v in os.environ.items() if not k.startswith("ORT_") and k not in ONNXRUNTIME_CI_MARKERS}
    relu = tmp_path / "relu.onnx"
    relu.write_bytes(summing_model(1))
    # control: onnxruntime imported without the toolkit writes its telemetry store under HOME
    (tmp_path / "control").mkdir()
    subprocess.run([sys.executable, "-c", "import onnxruntime"], check=True, cwd=tmp_path / "control",
                   env={**bare, "HOME": str(tmp_path / "control")})
    if not _files_under(tmp_path / "control"):
        pytest.skip("this onnxruntime build writes no telemetry files: nothing to tell apart")
    assert any("onnxruntime" in f for f in _files_under(tmp_path / "control"))
    # the agent and its measuring process, started without the variables, in a fresh HOME
    home = tmp_path / "agent-home"
    home.mkdir()
    with loopback_agent(tmp_path / "agent", environ={**bare, "HOME": str(home)}) as agent:
        model = put(agent, summing_model(1))
        assert timed_measure(agent, {**measure_body(model, runs=5), "inputs": {"x0": [1, 16]}})[0].status_code == 200
    assert _files_under(home) == []
    assert _files_under(tmp_path / "agent") == sorted(["agent.log", "token", f"store/models/{model}.onnx"])
    # a local measurement (dime_nas.cost.latency), in another fresh HOME
    home = tmp_path / "local-home"
    home.mkdir()
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from dime_nas.cost.local import OnnxRuntimeBackend\n"
            "from dime_nas.cost.onnx_export import ExportedTower\n"
            "from dime_nas.cost.targets import Target\n"
            "t = ExportedTower(tower='image', path=Path(sys.argv[1]), input_name='x0', input_dtype='float32',"
            " input_shape=('batch', 16), output_name='y', opset=18, exporter='onnx.helper', parity_max_abs_diff=0.0,"
            " file_bytes=1, export_seconds=0.0)\n"
            "print(OnnxRuntimeBackend().measure(t, Target(name='t', description='t', warmup=1, runs=3)).median_ms)\n")
    subprocess.run([sys.executable, "-c", code, str(relu)], check=True, cwd=home, capture_output=True,
                   env={**bare, "HOME": str(home), "PYTHONPATH": str(REPO)})
    assert _files_under(home) == []


def _send_until_closed(s: socket.socket, total: int, chunk: int = 64 * 1024) -> int:
    sent, block = 0, b"\0" * chunk
    try:
        while sent < total:
            sent += s.send(block)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    return sent


def test_a_body_without_the_token_is_not_read_and_the_connection_closed(tight):
    s = raw_connection(tight, ["PUT /v1/models/" + "ab" * 32 + " HTTP/1.1", f"Content-Length: {200 * 1024**2}"],
                       token=False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    s.settimeout(5)
    start = time.monotonic()
    with s:
        sent = _send_until_closed(s, 200 * 1024**2)
    assert sent <= 8 * 1024**2 and time.monotonic() - start < 5  # closed at once: at most the kernel's buffers
    assert tight.answers()


def test_a_stalled_upload_is_dropped_at_the_upload_deadline_and_uploads_are_capped(tight):
    name = "cd" * 32
    stalled = []
    for _ in range(2):  # the cap: two uploads at a time, each stopping one byte short
        s = raw_connection(tight, [f"PUT /v1/models/{name} HTTP/1.1", "Content-Length: 1000"])
        s.sendall(b"\0" * 999)
        stalled.append(s)
    time.sleep(0.5)
    third = raw_connection(tight, [f"PUT /v1/models/{name} HTTP/1.1", "Content-Length: 1000"])
    with third:
        status, body, closed = read_reply(third)
    assert status == 503 and "2 upload(s) in progress" in body["error"] and closed
    start = time.monotonic()
    for s in stalled:
        with s:
            status, body, closed = read_reply(s)
        assert status == 408 and "upload deadline" in body["error"] and body["bytes_read"] == 999 and closed
    assert time.monotonic() - start <= DEADLINE_S + MARGIN_S
    assert [p.name for p in (tight.store / "models").iterdir() if p.name.startswith(".")] == []  # no staged file
    assert tight.answers()


def test_bad_models_and_requests_get_a_4xx_that_names_the_problem(roomy, small_model):
    custom = put(roomy, custom_op_model())  # valid ONNX; onnxruntime has no com.example:Foo
    with roomy.client() as c:
        r = c.post("/v1/measure", json={**measure_body(custom), "inputs": {"x": [1, 4]}})
        assert r.status_code == 400 and "com.example:Foo" in r.json()["error"]
        assert str(roomy.store) not in r.text and custom in r.text  # the model is named by its hash only
        r = c.post("/v1/measure", json={**measure_body(small_model), "inputs": {"x": []}})
        assert r.status_code == 400 and "inputs['x'] must be a non-empty list" in r.json()["error"]
        r = c.post("/v1/measure", content=b"[" * 30_000 + b"]" * 30_000)
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]
        r = c.post("/v1/measure", json=measure_body(small_model + "\n"))
        assert r.status_code == 400 and "64 lower-case hex digits" in r.json()["error"]
        bad = b"\x08\x09" + b"not a model" * 100
        r = c.put(f"/v1/models/{sha(bad)}", content=bad)
        assert r.status_code == 400 and r.json()["bytes_read"] == len(bad)
        assert str(roomy.store) not in r.text and ".tmp" not in r.text
    assert roomy.answers()


def test_the_hash_must_match_whole():
    assert check_hash("a" * 64) == "a" * 64
    for bad in ("a" * 64 + "\n", "a" * 65, " " + "a" * 64, "A" * 64):
        with pytest.raises(ValueError):
            check_hash(bad)


def test_the_checker_runs_off_the_event_loop(roomy):
    data = many_nodes_model(600_000)  # about 15 MB; 0.75 s at 400,000 on a fast CI machine, too short
    latencies, done = [], threading.Event()

    def poll() -> None:
        with roomy.client() as c:
            while not done.is_set():
                start = time.monotonic()
                assert c.get("/v1/device").status_code == 200
                latencies.append(time.monotonic() - start)
                time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        start = time.monotonic()
        put(roomy, data)
        upload_s = time.monotonic() - start
    finally:
        done.set()
        poller.join()
    assert upload_s > 0.5 and len(latencies) > 5  # long enough that a blocked loop would show
    assert max(latencies) < 0.5 * upload_s, (max(latencies), upload_s)  # on the event loop it blocked all of it


def test_clients_that_leave_give_up_their_place_in_the_queue_and_their_run(roomy, small_model):
    body = json.dumps(measure_body(small_model, runs=1_000_000)).encode()  # would run to the 60 s deadline

    def send() -> socket.socket:
        s = raw_connection(roomy, ["POST /v1/measure HTTP/1.1", "Content-Type: application/json",
                                   f"Content-Length: {len(body)}"])
        s.sendall(body)
        time.sleep(0.5)
        return s

    running, waiting = send(), [send(), send()]  # the queue (limit 2) is full
    for s in waiting:
        s.close()
    time.sleep(0.5)
    fresh: list = []
    behind = threading.Thread(target=lambda: fresh.append(timed_measure(roomy, measure_body(small_model, runs=5))))
    behind.start()  # takes a freed place in the queue, behind the long run
    time.sleep(1.0)
    running.close()  # the long run is stopped: the fresh request runs next
    behind.join()
    (r, seconds), = fresh
    assert r.status_code == 200, r.text  # not 503 (abandoned requests holding the queue)
    assert seconds < 20  # not behind a minute-long run nobody waits for


def test_a_measurement_does_not_outlive_a_killed_agent(tmp_path):
    with loopback_agent(tmp_path / "agent", "--timeout-s", "600") as agent:
        model = put(agent, matmul_model(layers=2, seed=5))
        body = json.dumps(measure_body(model, runs=1_000_000)).encode()  # minutes of work
        s = raw_connection(agent, ["POST /v1/measure HTTP/1.1", "Content-Type: application/json",
                                   f"Content-Length: {len(body)}"])
        s.sendall(body)
        time.sleep(1.0)
        measuring = children(agent.process.pid, "measure")
        assert len(measuring) == 1
        agent.process.kill()  # SIGKILL: no shutdown code runs
        agent.process.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{next(iter(measuring))}").exists():
            time.sleep(0.1)
        s.close()
        assert not Path(f"/proc/{next(iter(measuring))}").exists()  # the kernel ended it with the agent


def test_websocket_requests_never_reach_the_app():
    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope)

    async def send(message):
        sent.append(message)

    gate = _TokenGate(app, "t" * 20)
    scope = {"type": "websocket", "path": "/v1/device", "headers": [(b"authorization", b"Bearer " + b"t" * 20)]}
    asyncio.run(gate(scope, None, send))
    assert reached == [] and sent == [{"type": "websocket.close", "code": 1008}]
    asyncio.run(gate({"type": "http", "path": "/v1/device", "headers": [(b"authorization", b"Bearer " + b"t" * 20)]},
                     None, send))
    assert len(reached) == 1  # the same token over HTTP does reach it
