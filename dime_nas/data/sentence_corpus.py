"""Sentence corpora: ``.txt``, ``.csv``, ``.tsv``, ``.parquet`` and ``.jsonl`` files.

Records stream file by file; stripping, dropping empties and exact dedup (8-byte
digests, so millions of sentences fit) are shared by every source.
"""

from __future__ import annotations

import csv
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from .corpus_base import READER_VERSION, PathSpec, SkipLog, digest8, expand_paths, file_stamp

SENTENCE_FORMATS = (".csv", ".jsonl", ".parquet", ".tsv", ".txt")


class TextRecord(NamedTuple):
    """One raw sentence record; ``error`` set means unreadable (counted as a bad line)."""

    key: str  # "<file>:<line>" or "<file>:row <n>"
    text: str  # unstripped; "" for a null value
    error: str | None = None


class SentenceSource(ABC):
    """A deterministic stream of sentences (the extension point).

    Call order: construct (validates files and column names) → ``identity()`` any time
    → ``iter_sentences(start)`` any number of times. Subclasses supply raw records in a
    fixed order; stripping, dropping empties, exact dedup and counting live here so
    every source cleans text the same way.
    """

    def __init__(self) -> None:
        self.log = SkipLog()

    @abstractmethod
    def iter_records(self) -> Iterator[TextRecord]:
        """Yield every raw record, unreadable ones included, in the same order each call."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-able description that changes when any file or reader option changes."""

    def iter_sentences(self, start: int = 0) -> Iterator[str]:
        """Yield stripped, non-empty, first-seen sentences from the ``start``-th on.

        Skipping re-reads and re-hashes the prefix (dedup state needs it) but records
        nothing in the log for it.
        """
        seen: set[int] = set()
        kept = 0
        for key, text, error in self.iter_records():
            counting = kept >= start
            if error is not None:
                if counting:
                    self.log.bad_line(key, error)
                continue
            text = text.strip()
            if not text:
                self.log.empty_dropped += counting
                continue
            h = digest8(text.encode("utf-8", "surrogatepass"))
            if h in seen:
                self.log.duplicates_dropped += counting
                continue
            seen.add(h)
            kept += 1
            if counting:
                self.log.sentences_kept += 1
                yield text


def _text_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number from 1, text with its newline or None if not UTF-8); BOM dropped."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield n, None
                continue
            yield n, line.removeprefix("\ufeff") if n == 1 else line


def _read_txt(path: Path, column: str | None) -> Iterator[TextRecord]:
    for n, line in _text_lines(path):
        yield TextRecord(f"{path}:{n}", "", "invalid UTF-8") if line is None else TextRecord(f"{path}:{n}", line)


def _read_jsonl(path: Path, column: str) -> Iterator[TextRecord]:
    for n, line in _text_lines(path):
        key = f"{path}:{n}"
        if line is None:
            yield TextRecord(key, "", "invalid UTF-8")
        elif not line.strip():
            yield TextRecord(key, "")
        else:
            text, error = _json_field(line.rstrip("\r\n"), column)
            yield TextRecord(key, text, error)


def _json_field(line: str, name: str) -> tuple[str, str | None]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return "", f"bad JSON at column {e.colno}: {e.msg}"
    if not isinstance(obj, dict):
        return "", f"not a JSON object but {type(obj).__name__}"
    if name not in obj:
        return "", f"no field {name!r}; fields: {sorted(obj)}"
    value = obj[name]
    if value is not None and not isinstance(value, str):
        return "", f"field {name!r} is {type(value).__name__}, not a string"
    return value or "", None


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[str, list[str] | None, str | None]]:
    """(key, row, error) per CSV record, streaming; an undecodable line becomes an error."""
    bad: list[int] = []

    def lines() -> Iterator[str]:
        for n, line in _text_lines(path):
            if line is None:
                bad.append(n)
                line = "\n"  # keeps the reader's line count aligned with the file
            yield line

    reader = csv.reader(lines(), delimiter=delimiter)
    while True:
        try:
            row: list[str] | None = next(reader)
            error = None
        except StopIteration:
            break
        except csv.Error as e:
            row, error = None, f"CSV error: {e}"
        while bad:
            yield f"{path}:{bad.pop(0)}", None, "invalid UTF-8"
        yield f"{path}:{reader.line_num}", row, error
    while bad:
        yield f"{path}:{bad.pop(0)}", None, "invalid UTF-8"


def _delimited_header(path: Path, delimiter: str) -> list[str]:
    for _, row, _ in _csv_rows(path, delimiter):
        return row or []
    return []


def _read_delimited(path: Path, column: str, delimiter: str) -> Iterator[TextRecord]:
    rows = _csv_rows(path, delimiter)
    _, header, _ = next(rows, ("", [], None))
    col = (header or []).index(column)  # presence checked when the corpus was opened
    for key, row, error in rows:
        if error is not None:
            yield TextRecord(key, "", error)
        elif not row:
            yield TextRecord(key, "")  # a blank line: an empty sentence
        elif col >= len(row):
            yield TextRecord(key, "", f"row has {len(row)} fields; column {column!r} is field {col + 1}")
        else:
            yield TextRecord(key, row[col])


def _read_parquet(path: Path, column: str) -> Iterator[TextRecord]:
    import pyarrow as pa  # heavy import, only when parquet is read
    import pyarrow.parquet as pq

    row = 0
    try:
        with pq.ParquetFile(path) as pf:
            # Batches within row groups: memory is one batch of one column.
            for batch in pf.iter_batches(batch_size=8192, columns=[column]):
                for value in batch.column(0).to_pylist():
                    yield TextRecord(f"{path}:row {row}", value or "")
                    row += 1
    except (pa.ArrowException, OSError) as e:  # a corrupt page ends this file, counted
        yield TextRecord(f"{path}:row {row}", "", f"unreadable from here on: {e}")


def _check_parquet_column(path: Path, column: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file: {e}") from None
    if column not in schema.names:
        raise ValueError(f"{path}: no column {column!r}; available columns: {schema.names}")
    t = schema.field(column).type
    if pa.types.is_dictionary(t):  # pandas categoricals
        t = t.value_type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
        raise ValueError(f"{path}: column {column!r} has type {t}, not string")


_READERS: dict[str, Callable[[Path, Any], Iterator[TextRecord]]] = {
    ".txt": _read_txt,
    ".jsonl": _read_jsonl,
    ".csv": lambda p, c: _read_delimited(p, c, ","),
    ".tsv": lambda p, c: _read_delimited(p, c, "\t"),
    ".parquet": _read_parquet,
}


class SentenceFiles(SentenceSource):
    """Sentences from one or more files, in the given order; formats may be mixed.

    ``.txt`` is one sentence per line; ``.csv``/``.tsv`` (header row, csv-module
    quoting), ``.parquet`` and ``.jsonl`` take the sentence from ``column``.
    """

    def __init__(self, paths: PathSpec | Sequence[PathSpec], column: str | None = None) -> None:
        super().__init__()
        self.files = expand_paths(paths)
        self.column = column
        for path in self.files:
            _check_sentence_file(path, column)

    def iter_records(self) -> Iterator[TextRecord]:
        for path in self.files:
            yield from _READERS[path.suffix.lower()](path, self.column)

    def identity(self) -> dict[str, Any]:
        return {"reader": "sentences", "version": READER_VERSION, "column": self.column,
                "files": [[str(p.resolve()), *file_stamp(p)] for p in self.files]}


def _check_sentence_file(path: Path, column: str | None) -> None:
    """Fail early, naming the file, on a wrong type or a missing column."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ValueError(f"{path} is a directory; pass sentence files (a glob works: {path}/*.txt)")
    if suffix not in _READERS:
        raise ValueError(f"{path}: unsupported sentence file type {suffix!r}; expected one of {SENTENCE_FORMATS}")
    if suffix == ".txt":
        return
    if column is None:
        raise ValueError(f"{path}: {suffix} files need a column (field) name for the sentence")
    if suffix == ".parquet":
        _check_parquet_column(path, column)
    elif suffix == ".jsonl":
        _check_jsonl_field(path, column)
    else:
        header = _delimited_header(path, "," if suffix == ".csv" else "\t")
        if column not in header:
            raise ValueError(f"{path}: no column {column!r}; available columns: {header}")


def _check_jsonl_field(path: Path, column: str, probe_lines: int = 100) -> None:
    """Check the field against the first JSON object (later misses are bad lines)."""
    for n, line in _text_lines(path):
        if n > probe_lines:
            return
        try:
            obj = json.loads(line or "")
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            if column not in obj:
                raise ValueError(f"{path}:{n}: no field {column!r}; available fields: {sorted(obj)}")
            return


def open_sentence_corpus(paths: PathSpec | Sequence[PathSpec], column: str | None = None) -> SentenceSource:
    """Open sentence files (paths, globs or brace ranges; formats by suffix) as one stream.

    Args:
        paths: one or more ``.txt``/``.csv``/``.tsv``/``.parquet``/``.jsonl`` files.
        column: the column (field) holding the sentence; required unless all are ``.txt``.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: unsupported file type, or the column is missing (the message lists
            the available ones).
    """
    return SentenceFiles(paths, column)
