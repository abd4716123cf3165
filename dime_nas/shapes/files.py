"""Write ShapesWorld to real files, laid out like the corpora a user would bring.

Layout under ``out_dir``::

    images/0000/00000000.png ...        image_format="folder" (shard_size files a folder)
    images/shard-000000.tar ...         image_format="tar" (WebDataset: members <key>.png)
    sentences.txt                       one sentence a line
    eval/<task>[-<shift>]/<class>/<n>.png   ImageFolder trees (class spaces -> "_")
    eval/<task>[-<shift>]/task.json     name, shift, classnames, folders, templates
    retrieval/images/<n>.png
    retrieval/captions.jsonl            {"image": "images/<n>.png", "caption": ...} a line

API:
    write_shapes_world(out_dir, *, n_images, n_sentences, image_size=64, seed=0,
                       image_format="folder", shard_size=1000, n_per_class=20,
                       n_retrieval=200, shifts=SHIFTS, progress=None) -> WorldFiles

Every file is written under a temporary name and renamed into place, so a killed
write never leaves a truncated file under its final name. Output is byte-identical
for the same arguments (tar members carry fixed metadata).
"""
from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image
from tqdm import tqdm

from ..fs import atomic_path, write_atomic
from .render import SHIFTS
from .streams import image_stream, sentence_stream
from .tasks import EvalTask, eval_suite, retrieval_set

IMAGE_FORMATS = ("folder", "tar")
_PROGRESS_MIN = 2000  # show a progress bar by default from this many files on


@dataclass(frozen=True)
class WorldFiles:
    """Paths written by ``write_shapes_world``."""

    root: Path
    images: tuple[Path, ...]  # png files ("folder") or tar shards ("tar")
    sentences: Path
    eval_tasks: tuple[Path, ...]  # one ImageFolder tree per task and shift
    retrieval_images: Path
    retrieval_captions: Path


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _write_folder(images: Iterable[Image.Image], root: Path, shard_size: int, bar: tqdm) -> list[Path]:
    paths = []
    for i, img in enumerate(images):
        path = root / f"{i // shard_size:04d}" / f"{i:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, _png(img))
        paths.append(path)
        bar.update()
    return paths


def _write_shards(images: Iterable[Image.Image], root: Path, shard_size: int, bar: tqdm) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    numbered = enumerate(images)
    for first in numbered:  # each pass writes one shard: this image and up to shard_size - 1 more
        path = root / f"shard-{first[0] // shard_size:06d}.tar"
        with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, img in itertools.chain([first], itertools.islice(numbered, shard_size - 1)):
                data = _png(img)
                info = tarfile.TarInfo(f"{i:08d}.png")  # fixed metadata: reproducible shards
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
                bar.update()
        paths.append(path)
    return paths


def _folder_name(classname: str) -> str:
    return classname.replace(" ", "_")


def write_eval_task(task: EvalTask, root: Path) -> Path:
    """Write one task as ``root/<task.key>/<class>/<n>.png`` plus ``task.json``."""
    task_dir = Path(root) / task.key
    folders = [_folder_name(c) for c in task.classnames]
    counts = [0] * len(folders)
    for img, label in zip(task.images, task.labels):
        path = task_dir / folders[label] / f"{counts[label]:06d}.png"
        counts[label] += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, _png(img))
    meta = {"name": task.name, "shift": task.shift, "classnames": list(task.classnames),
            "folders": folders, "templates": list(task.templates)}
    write_atomic(task_dir / "task.json", (json.dumps(meta, indent=2) + "\n").encode())
    return task_dir


def write_shapes_world(out_dir: str | os.PathLike, *, n_images: int, n_sentences: int, image_size: int = 64,
                       seed: int = 0, image_format: str = "folder", shard_size: int = 1000,
                       n_per_class: int = 20, n_retrieval: int = 200, shifts: Sequence[str] = SHIFTS,
                       progress: bool | None = None) -> WorldFiles:
    """Write unpaired images and sentences, the eval suite and the retrieval set.

    Args:
        out_dir: created if missing; files already there are overwritten.
        n_images, n_sentences: sizes of the unpaired corpora (drawn independently).
        image_size: rendered side in pixels.
        seed: everything written is a function of it.
        image_format: "folder" (png files, ``shard_size`` a sub-folder) or "tar"
            (WebDataset shards of ``shard_size`` members).
        n_per_class: eval images per class; n_retrieval: retrieval pairs (0: none).
        shifts: which of ``SHIFTS`` to write eval copies for, besides the plain one.
        progress: show tqdm bars; None shows them for large writes.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    for name, value, minimum in (("n_images", n_images, 0), ("n_sentences", n_sentences, 0),
                                 ("image_size", image_size, 8), ("shard_size", shard_size, 1),
                                 ("n_per_class", n_per_class, 1), ("n_retrieval", n_retrieval, 0)):
        _check_int(name, value, minimum)
    for shift in shifts:
        if shift not in SHIFTS:
            raise ValueError(f"unknown shift {shift!r}; expected one of {SHIFTS}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    show = (n_images + n_sentences >= _PROGRESS_MIN) if progress is None else progress

    with tqdm(total=n_images, desc="images", unit="img", disable=not show) as bar:
        stream = image_stream(seed, n_images, image_size)
        writer = _write_folder if image_format == "folder" else _write_shards
        images = writer(stream, root / "images", shard_size, bar)

    sentences = root / "sentences.txt"
    lines = tqdm(sentence_stream(seed, n_sentences), total=n_sentences, desc="sentences", disable=not show)
    write_atomic(sentences, "".join(s + "\n" for s in lines).encode())

    eval_dirs = []
    for shift in (None, *shifts):
        for task in eval_suite(seed, n_per_class, image_size, shift):
            eval_dirs.append(write_eval_task(task, root / "eval"))

    rdir = root / "retrieval"
    (rdir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    if n_retrieval:
        rset = retrieval_set(seed, n_retrieval, image_size)
        for i, (img, text) in enumerate(zip(rset.images, rset.captions)):
            rel = f"images/{i:06d}.png"
            write_atomic(rdir / rel, _png(img))
            records.append(json.dumps({"image": rel, "caption": text}) + "\n")
    captions = rdir / "captions.jsonl"
    write_atomic(captions, "".join(records).encode())
    return WorldFiles(root, tuple(images), sentences, tuple(eval_dirs), rdir / "images", captions)
