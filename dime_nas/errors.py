"""Errors the user can act on: the CLI prints their one-line message and exits with their code.

Every such error derives from :class:`UserError`; anything else is a bug (code 1, with a hint
to rerun with ``--debug``). Standard library only: the measurement agent uses it too.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class UserError(Exception):
    """Something the user can fix or must know (bad input, a missing file, a device that refuses):
    its message says all of it, so the CLI shows no traceback."""

    exit_code = 2  # the CLI's exit status


class ConfigError(UserError, ValueError):
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
