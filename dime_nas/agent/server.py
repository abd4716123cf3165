"""Start the agent: its command-line options, the token file read safely, uvicorn serving the app.

``python -m dime_nas.agent`` and ``dime-nas agent`` share these options; this module
imports only the standard library (and ``dime_nas.errors``, which does too), so neither entry
point loads the toolkit.
"""
from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError

DEFAULT_STORE = "~/.cache/dime_nas_agent"
MEMORY_SHARE = 0.5  # default memory limit per measurement: this share of the device's RAM


class AgentConfigError(UserError, ValueError):
    """The agent refuses to start (no token file, a file others can read, ...)."""


def read_token(path: str | Path) -> str:
    """The token in ``path``; the file must exist, be non-empty and be unreadable by others."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AgentConfigError(f"token file not found: {path} (write a long random token into it and "
                               f"`chmod 600` it)")
    mode = stat.S_IMODE(path.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        raise AgentConfigError(f"token file {path} is readable or writable by others (mode {mode:o}): "
                               f"`chmod 600 {path}`")
    token = path.read_text().strip()
    if len(token) < 16:
        raise AgentConfigError(f"token file {path} holds {len(token)} characters: use at least 16 "
                               f"(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def parse_labels(items: list[str]) -> dict[str, str]:
    """``["board=pi4-a", "room=lab"]`` -> {"board": "pi4-a", "room": "lab"}."""
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AgentConfigError(f"label {item!r} must look like KEY=VALUE")
        labels[key] = value
    return labels


def default_memory_mb() -> float:
    """``MEMORY_SHARE`` of the device's RAM in MB (2048 when the RAM cannot be read)."""
    from .device import memory_bytes

    total = memory_bytes()
    return round(total * MEMORY_SHARE / 1024**2) if total else 2048.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's options (one definition for ``dime-nas agent`` and ``python -m dime_nas.agent``)."""
    parser.add_argument("--token-file", required=True, help="file holding the token (mode 600; at least 16 characters)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"folder for received models (default {DEFAULT_STORE})")
    parser.add_argument("--max-model-mb", type=float, default=512.0, help="largest model accepted (default 512)")
    parser.add_argument("--max-memory-mb", type=float, default=None,
                        help=f"memory one measurement may use: its inputs and what the model allocates (default "
                             f"{MEMORY_SHARE:.0%}% of the device's RAM; over it: 413 or 422)")
    parser.add_argument("--timeout-s", type=float, default=600.0,
                        help="deadline of one measurement, from leaving the queue: loading, inputs, warm-up and "
                             "runs (default 600; 504 after)")
    parser.add_argument("--upload-timeout-s", type=float, default=300.0,
                        help="time to receive one upload's whole body (default 300; 408 after)")
    parser.add_argument("--max-uploads", type=int, default=2, help="uploads at a time (default 2; more get 503)")
    parser.add_argument("--queue-limit", type=int, default=8, help="measure requests that may wait (more get 503)")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="shown in the device description, e.g. board=pi4-a (repeatable)")


def serve_from_args(args: argparse.Namespace) -> None:
    """Serve with parsed options until interrupted; AgentConfigError for bad ones."""
    serve(args.token_file, host=args.host, port=args.port, store=args.store, max_model_mb=args.max_model_mb,
          max_memory_mb=args.max_memory_mb, timeout_s=args.timeout_s, upload_timeout_s=args.upload_timeout_s,
          max_uploads=args.max_uploads, queue_limit=args.queue_limit, labels=parse_labels(args.label))


def serve(token_file: str | Path, host: str = "127.0.0.1", port: int = 8765, store: str | Path = DEFAULT_STORE,
          max_model_mb: float = 512.0, max_memory_mb: float | None = None, timeout_s: float = 600.0,
          upload_timeout_s: float = 300.0, max_uploads: int = 2, queue_limit: int = 8,
          labels: dict[str, str] | None = None) -> None:
    """Serve the agent until interrupted (binds to 127.0.0.1 unless ``host`` says otherwise)."""
    import uvicorn

    from .app import AgentLimits, create_app

    memory_mb = default_memory_mb() if max_memory_mb is None else max_memory_mb
    try:
        limits = AgentLimits(max_model_bytes=int(max_model_mb * 1024**2), max_memory_bytes=int(memory_mb * 1024**2),
                             timeout_s=timeout_s, upload_timeout_s=upload_timeout_s, max_uploads=max_uploads,
                             queue_limit=queue_limit)
    except ValueError as err:
        raise AgentConfigError(str(err)) from None
    app = create_app(read_token(token_file), Path(store).expanduser(), limits, labels=labels)
    print(f"dime-nas agent on http://{host}:{port} (store {Path(store).expanduser()}; models up to {max_model_mb:g} MB, "
          f"{max_uploads} upload(s) at a time, {upload_timeout_s:g} s each; one measurement at a time, "
          f"{queue_limit} waiting, {timeout_s:g} s and {memory_mb:g} MB each; onnxruntime telemetry off)", flush=True)

    async def asgi(scope: dict, receive: Any, send: Any) -> None:
        # uvicorn calls the app once with no arguments to detect a factory: a plain function
        # refuses that call, where an app object whose __call__ takes any arguments would not
        await app(scope, receive, send)

    # ws="none": the API has no WebSocket route, so no upgrade is ever attempted
    uvicorn.run(asgi, host=host, port=port, log_level="warning", access_log=False, ws="none")


def main(argv: list[str] | None = None) -> int:
    """``python -m dime_nas.agent``: parse, serve; a bad option or token file exits 2 with one line."""
    parser = argparse.ArgumentParser(prog="python -m dime_nas.agent", description="The dime-nas measurement agent "
                                     "(the same as `dime-nas agent`; docs/agent.md).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        serve_from_args(args)
    except AgentConfigError as err:
        print(f"dime-nas agent: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
