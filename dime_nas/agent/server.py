"""Start the agent: read the token file safely, then serve the app with uvicorn."""
from __future__ import annotations

import os
import stat
from pathlib import Path

DEFAULT_STORE = "~/.cache/dime_nas_agent"


class AgentConfigError(ValueError):
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


def serve(token_file: str | Path, host: str = "127.0.0.1", port: int = 8765, store: str | Path = DEFAULT_STORE,
          max_model_mb: float = 512.0, queue_limit: int = 8, timeout_s: float = 600.0,
          labels: dict[str, str] | None = None) -> None:
    """Serve the agent until interrupted (binds to 127.0.0.1 unless ``host`` says otherwise)."""
    import uvicorn

    from .app import create_app

    if max_model_mb <= 0 or queue_limit < 0 or timeout_s <= 0:
        raise AgentConfigError("max_model_mb and timeout_s must be positive, queue_limit non-negative")
    app = create_app(read_token(token_file), Path(store).expanduser(), int(max_model_mb * 1024**2),
                     queue_limit=queue_limit, timeout_s=timeout_s, labels=labels)
    print(f"dime-nas agent on http://{host}:{port} (store {Path(store).expanduser()}, models up to "
          f"{max_model_mb:g} MB, queue {queue_limit}, timeout {timeout_s:g} s)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
