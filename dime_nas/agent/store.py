"""The agent's model store: ONNX files named by their SHA-256, in the agent's own folder.

A client never names a path: the only name is the hash, checked against a strict
pattern, and the server recomputes it from the bytes it received. Messages name a
model by its hash only, never by a file of the store.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from ..fs import atomic_path

_SHA256 = re.compile(r"[0-9a-f]{64}")


class UploadError(Exception):
    """A refused upload; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, bytes_read: int = 0) -> None:
        super().__init__(message)
        self.status, self.bytes_read = status, bytes_read


def check_hash(sha256: str) -> str:
    """``sha256`` if it is exactly 64 lower-case hex digits, else ValueError."""
    if not _SHA256.fullmatch(sha256):
        raise ValueError("a model is named by the SHA-256 of its bytes: 64 lower-case hex digits")
    return sha256


class ModelStore:
    """ONNX files under ``root/models/<sha256>.onnx``, each appearing only once checked."""

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.models = self.root / "models"
        self.models.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, sha256: str) -> Path:
        return self.models / f"{check_hash(sha256)}.onnx"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def put(self, sha256: str, chunks: AsyncIterator[bytes], declared_length: int | None,
                  timeout_s: float, check: Callable[[Path], Awaitable[str | None]]) -> Path:
        """Stream an upload to disk, hashing as it comes; stop reading at the size limit or the deadline.

        ``check`` gives the ONNX checker's complaint about the received file, or None
        (the agent runs ``onnx_problem`` in a child process).

        Raises:
            UploadError: 413 over the limit (declared or counted; reading stops there),
                408 when the body is not in within ``timeout_s``, 400 for a hash mismatch
                or a body that is not a valid ONNX model.
        """
        final = self.path(sha256)
        if declared_length is not None and declared_length > self.max_bytes:
            raise UploadError(413, f"model of {declared_length} bytes is over the {self.max_bytes}-byte limit", 0)
        digest, size = hashlib.sha256(), 0
        with atomic_path(final) as staged:  # a refused, broken or stalled upload leaves nothing behind
            try:
                async with asyncio.timeout(timeout_s):
                    with open(staged, "wb") as fh:
                        async for chunk in chunks:
                            size += len(chunk)
                            if size > self.max_bytes:
                                raise UploadError(413, f"model is over the {self.max_bytes}-byte limit "
                                                       f"(stopped reading at {size} bytes)", size)
                            digest.update(chunk)
                            fh.write(chunk)
            except TimeoutError:
                raise UploadError(408, f"upload not finished within the agent's {timeout_s:g} s upload deadline "
                                       f"(read {size} bytes)", size) from None
            if digest.hexdigest() != sha256:
                raise UploadError(400, f"hash mismatch: the body's SHA-256 is {digest.hexdigest()}, "
                                       f"not {sha256}", size)
            problem = await check(staged)
            if problem:
                problem = problem.replace(str(staged), "the upload").replace(str(self.root), "<store>")
                raise UploadError(400, f"not a valid ONNX model: {problem}", size)
        return final


def onnx_problem(path: str | Path) -> str | None:
    """The first line of the ONNX checker's complaint about ``path``, or None for a valid model."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as err:  # the checker raises ValidationError, protobuf DecodeError, ...
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return None

