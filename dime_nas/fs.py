"""Where the toolkit keeps its user cache, and how it writes files so that a kill never
leaves a half-written one. Standard library only: the torch-free agent uses it too.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def user_cache_root() -> Path:
    """``$DIME_NAS_CACHE``, else ``$XDG_CACHE_HOME/dime_nas``, else ``~/.cache/dime_nas``."""
    if os.environ.get("DIME_NAS_CACHE"):
        return Path(os.environ["DIME_NAS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dime_nas"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to; renamed over ``path`` when the block succeeds.

    Readers see the old file or the new one, never a partial one; on an error the
    temporary file is removed and ``path`` is left as it was. The name is unique per
    call, so concurrent writers of one path do not share a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
