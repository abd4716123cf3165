"""Image corpora: a folder tree, WebDataset-style ``.tar`` shards, or a list of paths.

Each reader yields undecoded images in a fixed order with ``start=`` to resume cheaply;
``decode_image`` turns bytes into RGB separately, so decoding can run elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

from PIL import Image

from .corpus_base import READER_VERSION, PathSpec, SkipLog, digest8, expand_paths, file_stamp, has_pattern

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
LIST_SUFFIXES = (".lst", ".txt")


def _norm_exts(extensions: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({("." + e.lstrip(".")).lower() for e in extensions}))


class RawImage(NamedTuple):
    """One undecoded image: its position in the raw order, a stable key, its bytes."""

    index: int
    key: str
    data: bytes


class ImageSource(ABC):
    """A deterministic, restartable sequence of encoded images (the extension point).

    Call order: construct (validates the spec, cheap) → ``identity()`` / ``count()`` any
    time → ``iter_raw(start)`` any number of times → ``decode_image(item.data)`` per item,
    possibly in another process.

    Invariants: every raw item has an index in ``range(count())``; ``iter_raw`` yields
    in increasing index order, identically on every call while ``identity()`` is
    unchanged; ``iter_raw(start=k)`` yields exactly the items with ``index >= k`` without
    reading those before; items that cannot be read are recorded in ``self.log`` and
    not yielded (so indices may have gaps); keys are unique. Resume a killed pass with
    ``start`` = one past the last index the previous run finished.
    """

    def __init__(self) -> None:
        self.log = SkipLog()

    @abstractmethod
    def iter_raw(self, start: int = 0) -> Iterator[RawImage]:
        """Yield undecoded images from raw position ``start`` on."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-able description that changes when any file or reader option changes."""

    @abstractmethod
    def count(self) -> int:
        """Number of raw positions (an upper bound on the items yielded)."""


def decode_image(data: bytes, log: SkipLog | None = None, key: str = "") -> Image.Image | None:
    """Decode encoded bytes to an RGB image; None (recorded in ``log``) if they are bad."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decode fully here so truncation surfaces now, not in a transform
            if "transparency" in im.info:  # palette/L transparency must go through RGBA
                im = im.convert("RGBA")
            rgb = im.convert("RGB")
    except Exception as e:  # PIL raises many types on bad bytes (OSError, SyntaxError, ...)
        if log is not None:
            log.skip_image(key, "decode_error", f"{type(e).__name__}: {e}")
        return None
    if log is not None:
        log.images_read += 1
    return rgb


def _read_bytes(path: str | Path, key: str, log: SkipLog) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        log.skip_image(key, "missing_file", str(path))
    except OSError as e:
        log.skip_image(key, "unreadable_file", f"{type(e).__name__}: {e}")
    return None


def walk_images(root: Path, extensions: tuple[str, ...]) -> Iterator[tuple[str, os.DirEntry]]:
    """Image files under root as (relative posix path, entry), names sorted at every
    level; streams (memory is one directory), skips dot-files, survives symlink loops."""
    seen: set[tuple[int, int]] = set()

    def visit(directory: str, prefix: str) -> Iterator[tuple[str, os.DirEntry]]:
        st = os.stat(directory)
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                yield from visit(e.path, f"{prefix}{e.name}/")
            elif os.path.splitext(e.name)[1].lower() in extensions:
                yield f"{prefix}{e.name}", e

    yield from visit(str(root), "")


class ImageFolder(ImageSource):
    """Images anywhere under a folder; keys are relative posix paths.

    The folder is listed live on every call, so added or removed files show up in the
    next ``identity()`` and ``iter_raw()``.
    """

    def __init__(self, root: PathSpec, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.extensions = _norm_exts(extensions)

    def iter_raw(self, start: int = 0) -> Iterator[RawImage]:
        for index, (key, entry) in enumerate(walk_images(self.root, self.extensions)):
            if index >= start and (data := _read_bytes(entry.path, key, self.log)) is not None:
                yield RawImage(index, key, data)

    def count(self) -> int:
        return sum(1 for _ in walk_images(self.root, self.extensions))

    def identity(self) -> dict[str, Any]:
        # A digest, not the list: the identity of 100k files stays a few hundred bytes.
        h, n, total = hashlib.blake2b(digest_size=16), 0, 0
        for key, entry in walk_images(self.root, self.extensions):
            size, mtime = file_stamp(Path(entry.path))
            h.update(os.fsencode(key) + b"\0%d\0%d\n" % (size, mtime))
            n, total = n + 1, total + max(size, 0)
        return {"reader": "folder", "version": READER_VERSION, "root": str(self.root.resolve()),
                "extensions": list(self.extensions), "count": n, "bytes": total, "files_digest": h.hexdigest()}


class ImageList(ImageSource):
    """Images named in a text file, one path per line.

    Relative paths resolve against the list file's folder; blank lines and ``#``
    comments are ignored; keys are the paths as written. A missing file or a repeated
    entry keeps its index and is recorded in the log.
    """

    def __init__(self, list_file: PathSpec) -> None:
        super().__init__()
        self.list_file = Path(list_file)
        if not self.list_file.is_file():
            raise FileNotFoundError(f"image list file not found: {self.list_file}")

    def _entries(self) -> Iterator[tuple[str, Path]]:
        base = self.list_file.parent
        with open(self.list_file, "rb") as f:
            for raw in f:
                entry = os.fsdecode(raw).strip().lstrip("\ufeff")  # any bytes are a valid path
                if entry and not entry.startswith("#"):
                    path = Path(entry)
                    yield entry, path if path.is_absolute() else base / path

    def iter_raw(self, start: int = 0) -> Iterator[RawImage]:
        seen: set[int] = set()
        for index, (key, path) in enumerate(self._entries()):
            h = digest8(os.fsencode(os.path.normpath(path)))
            repeated = h in seen
            seen.add(h)
            if index < start:
                continue
            if repeated:
                self.log.skip_image(key, "duplicate_entry", f"{path} is listed earlier")
            elif (data := _read_bytes(path, key, self.log)) is not None:
                yield RawImage(index, key, data)

    def count(self) -> int:
        return sum(1 for _ in self._entries())

    def identity(self) -> dict[str, Any]:
        h, n, total = hashlib.blake2b(digest_size=16), 0, 0
        for _, path in self._entries():
            size, mtime = file_stamp(path)
            h.update(os.fsencode(os.path.normpath(path)) + b"\0%d\0%d\n" % (size, mtime))
            n, total = n + 1, total + max(size, 0)
        return {"reader": "list", "version": READER_VERSION,
                "list_file": [str(self.list_file.resolve()), *file_stamp(self.list_file)],
                "count": n, "bytes": total, "files_digest": h.hexdigest()}


class TarShards(ImageSource):
    """Image members of WebDataset-style ``.tar`` shards, shard by shard, member order.

    Specs may use ``{000..099}`` brace ranges and globs; they are resolved once, here.
    Members whose name ends in an image extension are images (``.json``, ``.txt`` ...
    are ignored); keys are ``<shard path>/<member name>``. A truncated member is
    recorded as ``truncated_member``; a shard that breaks is read up to the break and
    recorded as ``truncated_shard`` (or ``corrupt_shard`` if it cannot be opened).
    """

    def __init__(self, specs: PathSpec | Sequence[PathSpec], extensions: Iterable[str] = IMAGE_EXTENSIONS) -> None:
        super().__init__()
        self.shards = expand_paths(specs)
        for shard in self.shards:
            if shard.suffix.lower() != ".tar" or not shard.is_file():
                raise ValueError(f"not a .tar shard: {shard}")
        self.extensions = _norm_exts(extensions)
        self._counts: dict[Path, tuple[tuple[int, int], int]] = {}  # shard -> (stamp, positions)

    def _known_count(self, shard: Path) -> int | None:
        stamp, n = self._counts.get(shard, (None, 0))
        return n if stamp is not None and stamp == file_stamp(shard) else None

    def _shard(self, shard: Path, first: int, start: int) -> Iterator[RawImage]:
        """Items of one shard numbered from ``first``; returns its number of positions."""
        stamp, index = file_stamp(shard), first
        try:
            tf = tarfile.open(shard, mode="r:")
        except (tarfile.TarError, OSError) as e:
            if index >= start:
                self.log.skip_image(str(shard), "corrupt_shard", f"{type(e).__name__}: {e}")
            self._counts[shard] = (stamp, 0)
            return 0
        with tf:
            try:
                while (member := tf.next()) is not None:
                    if not member.isfile() or os.path.splitext(member.name)[1].lower() not in self.extensions:
                        continue
                    index += 1
                    if index - 1 < start:
                        continue  # random-access mode seeks past the data unread
                    key = f"{shard}/{member.name}"
                    try:
                        data = tf.extractfile(member).read()
                    except (tarfile.TarError, OSError) as e:
                        self.log.skip_image(key, "truncated_member", f"{type(e).__name__}: {e}")
                        continue
                    yield RawImage(index - 1, key, data)
                problem = _tail_problem(tf)
            except (tarfile.TarError, OSError) as e:
                problem = f"{type(e).__name__}: {e} after byte {tf.offset}"
        if problem and index >= start:
            self.log.skip_image(str(shard), "truncated_shard", f"{problem}; the rest of the shard is lost")
        self._counts[shard] = (stamp, index - first)
        return index - first

    def iter_raw(self, start: int = 0) -> Iterator[RawImage]:
        first = 0
        for shard in self.shards:
            n = self._known_count(shard)
            if n is not None and first + n <= start:
                first += n  # skip a whole shard without opening it
                continue
            first += yield from self._shard(shard, first, start)

    def count(self) -> int:
        total = 0
        for shard in self.shards:
            n = self._known_count(shard)
            if n is None:
                n = _drain(self._shard(shard, 0, sys.maxsize))
            total += n
        return total

    def identity(self) -> dict[str, Any]:
        return {"reader": "tar", "version": READER_VERSION, "extensions": list(self.extensions),
                "files": [[str(s.resolve()), *file_stamp(s)] for s in self.shards]}


def _drain(gen: Iterator[Any]) -> Any:
    """Run a generator to the end and return its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _tail_problem(tf: tarfile.TarFile) -> str | None:
    """Why a tar ended early, or None: tarfile silently stops at a cut or garbage header."""
    tf.fileobj.seek(tf.offset)
    block = tf.fileobj.read(tarfile.BLOCKSIZE)
    if not block.strip(b"\0"):
        return None  # end-of-archive marker (maybe cut), or a clean end at a member boundary
    return f"unreadable header at byte {tf.offset}"


def open_image_corpus(spec: PathSpec | Sequence[PathSpec], extensions: Iterable[str] = IMAGE_EXTENSIONS) -> ImageSource:
    """Open an image corpus, picking the reader from the spec.

    Args:
        spec: a folder (``ImageFolder``); a ``.tar`` shard, a brace/glob pattern of
            shards or a list of them (``TarShards``); a ``.txt``/``.lst`` file of image
            paths (``ImageList``).
        extensions: image file extensions for folders and shards (case-insensitive).

    Raises:
        FileNotFoundError: the path, or a shard of the pattern, does not exist.
        ValueError: the spec names no known kind of corpus.
    """
    if isinstance(spec, (list, tuple)):
        if len(spec) != 1:
            return TarShards(spec, extensions)  # several specs only make sense as shards
        spec = spec[0]
    path = Path(spec)
    if path.is_dir():  # before patterns: a real folder may have `[` or `{` in its name
        return ImageFolder(path, extensions)
    if path.suffix.lower() in LIST_SUFFIXES and not has_pattern(str(spec)):
        return ImageList(path)
    if path.suffix.lower() == ".tar" or has_pattern(str(spec)):
        return TarShards(spec, extensions)
    if not path.exists():
        raise FileNotFoundError(f"image corpus not found: {path}")
    raise ValueError(f"cannot tell how to read image corpus {path}: expected a folder, "
                     f".tar shard(s) or a {'/'.join(LIST_SUFFIXES)} list of image paths")
