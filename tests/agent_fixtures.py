"""Start and stop a measurement agent on loopback, in its own process, for a test."""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


@dataclass
class LoopbackAgent:
    url: str
    token: str
    token_file: Path
    store: Path
    process: subprocess.Popen

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"} if token != "" else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def answers(self) -> bool:
        """The agent is alive and serving: GET /v1/device succeeds."""
        with self.client() as c:
            return c.get("/v1/device").status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_token(path: Path, token: str | None = None) -> str:
    token = token or secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


@contextlib.contextmanager
def loopback_agent(root: Path, *args: str, token: str | None = None,
                   environ: dict[str, str] | None = None) -> Iterator[LoopbackAgent]:
    """`python -m dime_nas.agent` on a free loopback port, run in ``root`` with ``environ``
    (default: this process's environment); stopped (and waited for) after."""
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "token"
    token = write_token(token_file, token)
    port = free_port()
    environ = os.environ if environ is None else environ
    env = {**environ, "PYTHONPATH": os.pathsep.join([str(REPO), environ.get("PYTHONPATH", "")])}
    log = open(root / "agent.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "dime_nas.agent", "--token-file", str(token_file),
                                "--port", str(port), "--store", str(root / "store"), *args],
                               stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    agent = LoopbackAgent(f"http://127.0.0.1:{port}", token, token_file, root / "store", process)
    try:
        deadline = time.time() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"agent exited: {(root / 'agent.log').read_text()}")
            try:
                if agent.answers():
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError("agent did not start within 60 s")
            time.sleep(0.2)
        yield agent
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
