"""Where a feature cache keeps what: its folder layout, its manifest, and what it was built for.

Layout of a cache folder::

    manifest.json                 identity (teacher, corpora, preprocessing), progress, counts, timings
    images/000000.emb.npy         (n, D) float16 teacher image embeddings (unnormalised)
    images/000000.pix.npy         (n, S, S, 3) uint8 pixels at `pixel_size`, what students train on
    images/000000.keys.txt        corpus keys of those images
    texts/000000.emb.npy          (m, D) float16 teacher sentence embeddings
    texts/000000.tok.npy          (m, context_length) int32 token ids (for student text towers)
    texts/000000.jsonl            the sentences
    eval/task-000.npz ...         evaluation images (pixels, labels, teacher embeddings), prompt embeddings
    eval/retrieval.npz

Chunks are written under temporary names and renamed, then recorded in the manifest
(also replaced atomically): a build killed at any point resumes from its last complete
chunk. A manifest whose identity differs from the current teacher/corpora/options is
rebuilt from scratch, and the log says what changed. Readers memory-map the chunks.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UserError
from ...fs import atomic_path, write_atomic
from ..eval_sets import EvalSuite
from ..image_corpus import ImageSource
from ..sentence_corpus import SentenceSource

CACHE_VERSION = 2  # 2: evaluation images carry their split score


class CacheError(UserError, RuntimeError):
    """A cache folder that cannot be used (incomplete, corrupt, or built for something else)."""


def image_stem(root: Path, chunk: int) -> Path:
    """``images/NNNNNN``: add ``.emb.npy``, ``.pix.npy`` or ``.keys.txt``."""
    return root / "images" / f"{chunk:06d}"


def text_stem(root: Path, chunk: int) -> Path:
    """``texts/NNNNNN``: add ``.emb.npy``, ``.tok.npy`` or ``.jsonl``."""
    return root / "texts" / f"{chunk:06d}"


def identity_without_teacher(teacher_identity: dict[str, Any] | None, images: ImageSource, sentences: SentenceSource,
                             eval_suite: EvalSuite, *, pixel_size: int, max_images: int | None,
                             max_sentences: int | None, drop_eval_overlap: bool) -> dict[str, Any]:
    """What a cache was built for, from the teacher's identity alone (the preprocessing and
    context length in the full identity follow from the teacher, so they match when it does)."""
    return {"version": CACHE_VERSION, "teacher": teacher_identity, "images": images.identity(),
            "sentences": sentences.identity(),
            "eval": hashlib.sha256(json.dumps(eval_suite.identity(), sort_keys=True).encode()).hexdigest(),
            "pixel_size": pixel_size, "max_images": max_images, "max_sentences": max_sentences,
            "drop_eval_overlap": drop_eval_overlap}


def cache_identity(teacher: Any, images: ImageSource, sentences: SentenceSource, eval_suite: EvalSuite, *, pixel_size: int,
                   max_images: int | None, max_sentences: int | None, drop_eval_overlap: bool = False
                   ) -> dict[str, Any]:
    """Everything that determines the cache's contents; any change means a rebuild."""
    return {**identity_without_teacher(teacher.identity, images, sentences, eval_suite, pixel_size=pixel_size,
                                       max_images=max_images, max_sentences=max_sentences,
                                       drop_eval_overlap=drop_eval_overlap),
            "preprocess": teacher.preprocess_cfg, "context_length": teacher.context_length}


def cache_mismatch(out_dir: str | Path, teacher_identity: dict[str, Any] | None, images: ImageSource, sentences: SentenceSource,
                   eval_suite: EvalSuite, *, pixel_size: int, max_images: int | None = None,
                   max_sentences: int | None = None, drop_eval_overlap: bool = False) -> str | None:
    """Why the cache in ``out_dir`` cannot serve these inputs (missing, incomplete, built for a
    different key), or None when it can. Needs only the teacher's identity, not the teacher."""
    manifest = read_manifest(Path(out_dir))
    if manifest is None:
        return "missing"
    if not manifest.get("complete") or "text_cfg" not in manifest:
        return "incomplete (a build was interrupted or is running)"
    if teacher_identity is None:
        return "the teacher's identity cannot be worked out without loading it"
    recorded = manifest.get("identity", {})
    expected = identity_without_teacher(teacher_identity, images, sentences, eval_suite, pixel_size=pixel_size,
                                        max_images=max_images, max_sentences=max_sentences,
                                        drop_eval_overlap=drop_eval_overlap)
    for key, value in expected.items():
        if recorded.get(key) != value:
            return f"built for a different {key}"
    return None


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    write_atomic(root / "manifest.json", json.dumps(manifest, indent=1) + "\n")


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # unreadable: treated as built for something else, so rebuilt
