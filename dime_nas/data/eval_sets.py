"""Evaluation sets read from real files: zero-shot tasks (ImageFolder trees) and a
paired retrieval set (JSONL of image path + caption).

A task folder holds one sub-folder per class; an optional ``task.json`` beside them
gives ``classnames`` (sub-folder -> prompt name), ``templates`` and ``shifted``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .corpus_base import SkipLog
from .image_corpus import IMAGE_EXTENSIONS, decode_image, walk_images


@dataclass
class EvalTask:
    """A zero-shot classification task on image files."""

    name: str
    classnames: list[str]  # prompt names, in label order
    templates: list[str]  # prompt templates with one "{}"
    files: list[tuple[Path, int]]  # (image path, label)
    shifted: bool = False  # a distribution-shift variant (reported apart from in-distribution tasks)


@dataclass
class RetrievalSet:
    """Paired images and captions (one caption per image)."""

    name: str
    files: list[Path]
    captions: list[str]


@dataclass
class EvalSuite:
    tasks: list[EvalTask] = field(default_factory=list)
    retrieval: RetrievalSet | None = None

    def identity(self) -> dict:
        """Describes every file (path, size, mtime) and prompt: changes invalidate cached features."""
        def stamp(p: Path) -> list:
            st = p.stat()
            return [str(p), st.st_size, st.st_mtime_ns]

        return {
            "tasks": [{"name": t.name, "classnames": t.classnames, "templates": t.templates, "shifted": t.shifted,
                       "files": [stamp(p) + [y] for p, y in t.files]} for t in self.tasks],
            "retrieval": None if self.retrieval is None else {
                "files": [stamp(p) for p in self.retrieval.files], "captions": self.retrieval.captions},
        }


def load_folder_task(folder: str | Path, name: str | None = None, templates: list[str] | None = None,
                     classnames: dict[str, str] | None = None, shifted: bool | None = None,
                     max_images: int | None = None) -> EvalTask:
    """Read an ImageFolder task; arguments override the folder's ``task.json``.

    ``task.json`` may give ``folders`` (class order) with ``classnames`` as a list in
    that order, or ``classnames`` as a mapping sub-folder -> prompt name; ``shifted``
    (or a non-null ``shift``) marks a distribution-shift variant.
    """
    root = Path(folder)
    meta = json.loads((root / "task.json").read_text()) if (root / "task.json").is_file() else {}
    subdirs = meta.get("folders") or sorted(p.name for p in root.iterdir() if p.is_dir())
    if not subdirs:
        raise FileNotFoundError(f"evaluation task folder {root} has no class sub-folders")
    listed = meta.get("classnames")
    names = {d: d.replace("_", " ") for d in subdirs}
    names.update(dict(zip(subdirs, listed)) if isinstance(listed, list) else (listed or {}))
    names.update(classnames or {})
    label = {d: i for i, d in enumerate(subdirs)}
    files = [(root / key, label[key.split("/", 1)[0]])
             for key, _ in walk_images(root, IMAGE_EXTENSIONS) if "/" in key and key.split("/", 1)[0] in label]
    if max_images is not None:
        files = _balanced_head(files, max_images)
    is_shifted = bool(meta.get("shifted", meta.get("shift") is not None)) if shifted is None else shifted
    return EvalTask(name=name or root.name, classnames=[names[d] for d in subdirs],
                    templates=templates or meta.get("templates") or ["a photo of a {}."],
                    files=files, shifted=is_shifted)


def _balanced_head(files: list[tuple[Path, int]], n: int) -> list[tuple[Path, int]]:
    """At most n files, taken round-robin over classes so the cap keeps labels balanced."""
    by_class: dict[int, list] = {}
    for item in files:
        by_class.setdefault(item[1], []).append(item)
    out, i = [], 0
    while len(out) < n and any(i < len(v) for v in by_class.values()):
        out += [v[i] for v in by_class.values() if i < len(v)][: n - len(out)]
        i += 1
    return sorted(out, key=lambda item: str(item[0]))


def load_retrieval_pairs(path: str | Path, name: str = "retrieval") -> RetrievalSet:
    """Read a JSONL file of ``{"image": path, "caption": text}`` (paths relative to the file)."""
    path = Path(path)
    files, captions = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            files.append((path.parent / row["image"]).resolve())
            captions.append(str(row["caption"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: expected {{\"image\": ..., \"caption\": ...}}: {exc}") from None
    return RetrievalSet(name, files, captions)


def read_image(path: Path, log: SkipLog) -> Image.Image | None:
    """Decode one evaluation image; unreadable files are counted in ``log``, not raised."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.skip_image(str(path), "unreadable_file", str(exc))
        return None
    return decode_image(data, log, str(path))
