"""What the corpus readers (``image_corpus``, ``sentence_corpus``) share: the skip log,
file stamps and path specs. Bad items are skipped and counted in a :class:`SkipLog`:
never a crash, never silent.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import braceexpand  # a webdataset dependency: `{000..099}` ranges in shard specs

READER_VERSION = 1  # part of every identity: bump when reading semantics change

PathSpec = str | os.PathLike
_log = logging.getLogger(__name__)


@dataclass
class SkipLog:
    """What a corpus read kept and dropped, with the first offenders by key.

    A source's log accumulates over its iterations, but each iteration records only
    from its ``start`` on, so a run resumed at ``start=k`` and the run before it count
    every item once.
    """

    images_read: int = 0
    images_skipped: Counter = field(default_factory=Counter)  # reason -> count
    sentences_kept: int = 0
    empty_dropped: int = 0
    duplicates_dropped: int = 0
    bad_lines: int = 0
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # key, reason, detail
    max_examples: int = 1000  # bounds memory when a corpus is mostly broken

    def skip_image(self, key: str, reason: str, detail: str = "") -> None:
        """Count one image (or shard) that could not be used."""
        self.images_skipped[reason] += 1
        self._note(key, reason, detail)

    def bad_line(self, key: str, detail: str) -> None:
        """Count one unreadable sentence record."""
        self.bad_lines += 1
        self._note(key, "bad_line", detail)

    def _note(self, key: str, reason: str, detail: str) -> None:
        if len(self.examples) < self.max_examples:
            self.examples.append((key, reason, detail))
            _log.warning("skipped %s (%s): %s", key, reason, detail)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able counts and examples."""
        return {
            "images_read": self.images_read,
            "images_skipped": dict(self.images_skipped),
            "sentences_kept": self.sentences_kept,
            "empty_dropped": self.empty_dropped,
            "duplicates_dropped": self.duplicates_dropped,
            "bad_lines": self.bad_lines,
            "examples": [list(e) for e in self.examples],
        }


def digest8(data: bytes) -> int:
    """64-bit hash for streaming dedup: ~60 bytes per item in a set, collisions ~1e-5 at 30M."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, mtime_ns), or (-1, -1) for a file that is gone."""
    try:
        st = path.stat()
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def has_pattern(spec: str) -> bool:
    """Whether a path spec has globs or a brace range."""
    return any(c in spec for c in "*?[") or ("{" in spec and "}" in spec)


def _expand(spec: PathSpec) -> list[Path]:
    """Paths named by one spec: brace ranges first, then globs (sorted); all must exist."""
    try:
        parts = list(braceexpand.braceexpand(str(spec)))
    except braceexpand.UnbalancedBracesError as e:
        raise ValueError(f"bad brace pattern {str(spec)!r}: {e}") from None
    out: list[Path] = []
    for part in parts:
        if any(c in part for c in "*?["):
            hits = sorted(map(Path, glob.glob(part)))
            if not hits:
                raise FileNotFoundError(f"no file matches {part!r} (from {str(spec)!r})")
            out += hits
        elif not Path(part).exists():
            raise FileNotFoundError(f"file not found: {part}" + (f" (from {str(spec)!r})" if part != str(spec) else ""))
        else:
            out.append(Path(part))
    return out


def expand_paths(specs: PathSpec | Sequence[PathSpec]) -> list[Path]:
    """Expand one spec or several, dropping repeats (first occurrence wins)."""
    specs = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    if not specs:
        raise ValueError("no corpus files given")
    return list(dict.fromkeys(p for s in specs for p in _expand(s)))
