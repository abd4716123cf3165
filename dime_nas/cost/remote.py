"""The ``remote`` latency backend: measures on the target device through its agents.

Each model is sent at most once per agent (``HEAD`` then ``PUT`` under its SHA-256);
the agent times it with the same fixed inputs, warm-up and statistics as a local
measurement. Several agents may serve one target: measurements go round-robin over
them, and an agent that stays unreachable is skipped for the next. A lost connection
is retried with backoff; if no agent answers, the error names them, so the trial
fails and the study goes on. A remote target's agents and token are its ``options``
(:class:`RemoteOptions`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dime_nas.agent.timing import latency_stats
from dime_nas.cost.backend import LatencyBackend, LatencyMeasurement
from dime_nas.errors import ConfigError, UserError

if TYPE_CHECKING:
    from dime_nas.cost.onnx_export import ExportedTower
    from dime_nas.cost.targets import Target

RETRIES = 3  # attempts per agent after the first, on lost connections and 503 (busy)
BACKOFF_S = 0.5  # first wait between attempts; doubles each time
CONNECT_TIMEOUT_S = 5.0
_STAT_FIELDS = tuple(k for k in latency_stats([1.0]) if k in {f.name for f in dataclasses.fields(LatencyMeasurement)})
_rotation: dict[tuple[str, ...], itertools.count] = {}  # per agent set: where the next measurement goes


class AgentError(UserError, RuntimeError):
    """An agent refused a request, or no agent of a target could be reached."""


@dataclass(frozen=True)
class RemoteOptions:
    """A remote target's ``options``: where its agents are and how to authenticate to them."""

    urls: tuple[str, ...]  # http(s)://HOST:PORT of the agents serving the target (YAML: url or urls); spread over
    token_env: str | None = None  # environment variable holding the agents' token
    token_file: str | None = None  # file holding the agents' token (instead of token_env)


def target_token(target: Target) -> str:
    """The token of a remote target, from its environment variable or file."""
    options: RemoteOptions = target.options
    if options.token_env:
        token = os.environ.get(options.token_env, "").strip()
        if not token:
            raise AgentError(f"target {target.name!r}: environment variable {options.token_env} (the agents' "
                             f"token) is not set")
        return token
    path = Path(str(options.token_file)).expanduser()
    if not path.is_file():
        raise AgentError(f"target {target.name!r}: token file {path} not found")
    return path.read_text().strip()


class AgentClient:
    """HTTP client of one agent (httpx), with retries and backoff on lost connections."""

    def __init__(self, url: str, token: str, *, retries: int | None = None, backoff_s: float | None = None,
                 timeout_s: float = 900.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.retries = RETRIES if retries is None else retries
        self.backoff_s = BACKOFF_S if backoff_s is None else backoff_s
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                                  timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as err:
                problem = f"{type(err).__name__}: {err}"
            else:
                if response.status_code != 503:
                    return response
                problem = f"busy (503): {_message(response)}"
            if attempt < self.retries:
                time.sleep(wait)
                wait *= 2
        raise AgentError(f"agent {self.url} unreachable after {self.retries + 1} attempt(s): {problem}")

    def _check(self, response: Any, what: str) -> Any:
        if response.status_code == 401:
            raise AgentError(f"agent {self.url} refused the token (401): check the target's token_env/token_file "
                             "option")
        if response.status_code >= 400:
            raise AgentError(f"agent {self.url}: {what} failed ({response.status_code}): {_message(response)}")
        return response

    def device(self) -> dict[str, Any]:
        """The device description (CPU, cores, memory, OS, onnxruntime, providers, labels)."""
        return self._check(self._request("GET", "/v1/device"), "device").json()

    def ensure_model(self, path: str | Path) -> str:
        """Send the ONNX file unless the agent already holds it; returns its SHA-256."""
        path = Path(path)
        if Path(str(path) + ".data").exists():
            raise AgentError(f"{path} keeps its weights in a side file: remote measurement needs a single-file "
                             "model (under 2 GB)")
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if self._request("HEAD", f"/v1/models/{sha}").status_code != 200:
            self._check(self._request("PUT", f"/v1/models/{sha}", content=data,
                                      headers={"Content-Type": "application/octet-stream"}), "upload")
        return sha

    def measure(self, sha: str, *, providers: list[str], threads: int, batch: int, warmup: int, runs: int,
                inputs: dict[str, list[int]], sessions: int = 1) -> dict[str, Any]:
        """Time a stored model on the agent; the same statistics as a local measurement."""
        body = {"model": sha, "providers": providers, "threads": threads, "batch": batch, "warmup": warmup,
                "runs": runs, "sessions": sessions, "inputs": inputs}
        return self._check(self._request("POST", "/v1/measure", json=body), "measure").json()


def _message(response: Any) -> str:
    try:
        return str(response.json().get("error", response.text))[:500]
    except ValueError:
        return response.text[:500]


def next_agents(target: Target) -> list[str]:
    """The target's agents in the order to try them: the next one round-robin first."""
    urls = list(target.options.urls)
    start = next(_rotation.setdefault(tuple(urls), itertools.count())) % len(urls)
    return urls[start:] + urls[:start]


class RemoteBackend(LatencyBackend):
    """onnxruntime on the target device, through ``dime-nas agent`` (see module docstring)."""

    name = "remote"

    @classmethod
    def parse_options(cls, options: Mapping[str, Any] | None) -> RemoteOptions:
        raw = dict(options or {})
        if "url" in raw:
            if "urls" in raw:
                raise ConfigError("give url or urls, not both")
            raw["urls"] = raw.pop("url")
        known = [f.name for f in dataclasses.fields(RemoteOptions)]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(map(str, unknown))} of backend remote "
                              f"(known: url, {', '.join(known)})")
        urls = raw.get("urls") or ()
        urls = (urls,) if isinstance(urls, str) else tuple(urls)
        if not urls or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
            raise ConfigError("a remote target needs the option url (or urls): http(s)://HOST:PORT of its agents")
        if (raw.get("token_env") is None) == (raw.get("token_file") is None):
            raise ConfigError("a remote target needs exactly one of the options token_env or token_file")
        return RemoteOptions(urls, raw.get("token_env"), raw.get("token_file"))

    def measure(self, exported: ExportedTower, target: Target) -> LatencyMeasurement:
        path = exported.path_for(target)
        token = target_token(target)
        shape = [target.batch_size if isinstance(d, str) else int(d) for d in exported.input_shape]
        problems = []
        for url in next_agents(target):
            with AgentClient(url, token) as agent:
                try:
                    sha = agent.ensure_model(path)
                    result = agent.measure(sha, providers=list(target.providers), threads=target.intra_op_threads,
                                           batch=target.batch_size, warmup=target.warmup, runs=target.runs,
                                           sessions=target.sessions, inputs={exported.input_name: shape})
                    device = agent.device()
                except AgentError as err:
                    if "unreachable" not in str(err):
                        raise  # a refusal is not cured by another board
                    problems.append(str(err))
                    continue
            stats = {k: result[k] for k in _STAT_FIELDS}
            return LatencyMeasurement(
                tower=exported.tower, target=target.name, backend=self.name, **stats, runs=result["runs"],
                sessions=result.get("sessions", 1), session_medians_ms=result.get("session_medians_ms", []),
                warmup=result["warmup"], batch=target.batch_size, threads=result["threads"],
                providers=list(result["providers"]), precision=target.precision,
                machine={"agent": url, **device, "torch": None},  # torch: the agent never loads it
            )
        raise AgentError(f"target {target.name!r}: no agent could be reached: " + "; ".join(problems))

    def devices(self, target: Target) -> list[dict[str, Any]]:
        """Each agent of the target: {"url", "device"} or {"url", "error"}."""
        out = []
        for url in target.options.urls:
            try:
                with AgentClient(url, target_token(target), retries=0, timeout_s=10.0) as agent:
                    out.append({"url": url, "device": agent.device()})
            except AgentError as err:
                out.append({"url": url, "error": str(err)})
        return out
