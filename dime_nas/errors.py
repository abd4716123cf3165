"""Errors that mean "your input is wrong" (the CLI prints them and exits with code 2)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class ConfigError(ValueError):
    """Bad user input: names the file, the key (dotted path) and the problem in one line."""

    def __init__(self, problem: str, *, file: str | Path | None = None, key: str | None = None):
        self.problem, self.file, self.key = problem, file, key
        where = ": ".join(str(p) for p in (file, key) if p)
        super().__init__(f"{where}: {problem}" if where else problem)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
