"""Reading a complete feature cache: what the trainer and the evaluator use (no teacher).

The chunks are memory-mapped, or gathered into memory when the cache is small.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..eval_sets import EvalSuite
from ..image_corpus import ImageSource
from ..sentence_corpus import SentenceSource
from .layout import CacheError, cache_mismatch, image_stem, read_manifest, text_stem


def open_complete_cache(out_dir: str | Path, teacher_identity: dict[str, Any] | None, images: ImageSource,
                        sentences: SentenceSource, eval_suite: EvalSuite, *, pixel_size: int,
                        max_images: int | None = None, max_sentences: int | None = None,
                        drop_eval_overlap: bool = False) -> FeatureCache | None:
    """The cache in ``out_dir`` if it is complete and was built for exactly these inputs, else None.

    Needs only the teacher's identity, not the teacher: the preprocessing and context
    length in the recorded identity follow from the teacher, so they match when it does.
    """
    if cache_mismatch(out_dir, teacher_identity, images, sentences, eval_suite, pixel_size=pixel_size,
                      max_images=max_images, max_sentences=max_sentences,
                      drop_eval_overlap=drop_eval_overlap) is not None:
        return None
    return FeatureCache(out_dir)


class ChunkedArray:
    """Rows spread over equal-sized .npy chunks, memory-mapped; gathered by index."""

    def __init__(self, files: list[Path], counts: list[int], in_memory: bool):
        self._chunks = [np.load(f, mmap_mode="r") for f in files]
        if in_memory and self._chunks:
            self._chunks = [np.concatenate(self._chunks)]
            counts = [sum(counts)]
        self._starts = np.cumsum([0, *counts])
        self.shape = (int(self._starts[-1]), *(self._chunks[0].shape[1:] if self._chunks else ()))

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices)
        if len(self._chunks) == 1:
            return np.asarray(self._chunks[0][indices])
        which = np.searchsorted(self._starts, indices, side="right") - 1
        out = np.empty((len(indices), *self.shape[1:]), dtype=self._chunks[0].dtype)
        for c in np.unique(which):
            sel = which == c
            out[sel] = self._chunks[c][indices[sel] - self._starts[c]]
        return out


@dataclass
class CachedTask:
    name: str
    classnames: list[str]
    templates: list[str]
    shifted: bool
    pixels: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,)
    image_emb: np.ndarray  # (N, D) teacher
    class_emb: np.ndarray  # (C, D) teacher, normalised prompt ensemble
    prompt_tokens: np.ndarray  # (C, T, L) int32


@dataclass
class CachedRetrieval:
    name: str
    pixels: np.ndarray
    image_emb: np.ndarray
    text_emb: np.ndarray
    text_tokens: np.ndarray


SPLITS = ("val", "test", "all")


def _split_rows(score: np.ndarray, split: str, test_fraction: float) -> np.ndarray:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return np.ones(len(score), dtype=bool)
    return score < test_fraction if split == "test" else score >= test_fraction


class FeatureCache:
    """Read side of a complete cache: what the trainer and the evaluator use (no teacher)."""

    def __init__(self, root: str | Path, in_memory: bool | None = None, test_fraction: float = 0.5):
        self.root = Path(root)
        self.test_fraction = test_fraction  # share of each evaluation set held out as the test split
        manifest = read_manifest(self.root)
        if not manifest or not manifest.get("complete"):
            raise CacheError(f"{self.root} is not a complete feature cache (build it with `dime-nas cache`)")
        self.manifest = manifest
        img, txt = manifest["images"]["chunks"], manifest["texts"]["chunks"]
        if not img or not txt:
            raise CacheError(f"feature cache {self.root} holds no images or no sentences: check the corpora")
        s = self.pixel_size
        if in_memory is None:  # small caches are gathered faster from RAM
            in_memory = sum(c["count"] for c in img) * s * s * 3 < (2 << 30)
        stems_i = [image_stem(self.root, i) for i in range(len(img))]
        stems_t = [text_stem(self.root, i) for i in range(len(txt))]
        ci, ct = [c["count"] for c in img], [c["count"] for c in txt]
        try:
            self.image_emb = ChunkedArray([p.with_suffix(".emb.npy") for p in stems_i], ci, in_memory)
            self.pixels = ChunkedArray([p.with_suffix(".pix.npy") for p in stems_i], ci, in_memory)
            self.text_emb = ChunkedArray([p.with_suffix(".emb.npy") for p in stems_t], ct, in_memory)
            self.text_tokens = ChunkedArray([p.with_suffix(".tok.npy") for p in stems_t], ct, in_memory)
        except (OSError, ValueError) as exc:
            raise CacheError(f"feature cache {self.root} is damaged ({exc}): delete it to rebuild") from None

    @property
    def pixel_size(self) -> int:
        return int(self.manifest["pixel_size"])

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.manifest["context_length"])

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        from ...preprocess import CLIP_MEAN, CLIP_STD

        p = self.manifest["preprocess"]
        return tuple(p.get("mean", CLIP_MEAN)), tuple(p.get("std", CLIP_STD))

    @property
    def n_images(self) -> int:
        return len(self.image_emb)

    @property
    def n_texts(self) -> int:
        return len(self.text_emb)

    def image_keys(self) -> list[str]:
        """Corpus key of every cached image, in cache order."""
        return [k for i in range(len(self.manifest["images"]["chunks"]))
                for k in image_stem(self.root, i).with_suffix(".keys.txt").read_text().splitlines()]

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        skipped = Counter()
        for c in m["images"]["chunks"]:
            skipped.update(c.get("skipped", {}))
        dropped = Counter()
        for c in m["texts"]["chunks"]:
            dropped.update(c.get("dropped", {}))
        return {"root": str(self.root), "teacher": m["teacher"], "images": self.n_images, "sentences": self.n_texts,
                "images_skipped": dict(skipped), "sentences_dropped": dict(dropped),
                "eval_tasks": [t["name"] for t in m["eval"]["tasks"]], "pixel_size": self.pixel_size,
                "embed_dim": self.embed_dim, "seconds": m["seconds"], "resumed": m.get("resumed", 0)}

    def tasks(self, split: str = "val") -> list[CachedTask]:
        """The evaluation tasks restricted to ``split``: "val" (what searches see), "test" (held out) or "all"."""
        out = []
        for t in self.manifest["eval"]["tasks"]:
            with np.load(self.root / "eval" / t["file"]) as z:
                rows = _split_rows(z["split_score"], split, self.test_fraction)
                out.append(CachedTask(t["name"], t["classnames"], t["templates"], t["shifted"],
                                      z["pixels"][rows], z["labels"][rows], z["image_emb"][rows].astype(np.float32),
                                      z["class_emb"], z["prompt_tokens"]))
        return out

    def retrieval(self, split: str = "val") -> CachedRetrieval | None:
        r = self.manifest["eval"]["retrieval"]
        if r is None:
            return None
        with np.load(self.root / "eval" / r["file"]) as z:
            rows = _split_rows(z["split_score"], split, self.test_fraction)
            return CachedRetrieval(r["name"], z["pixels"][rows], z["image_emb"][rows].astype(np.float32),
                                   z["text_emb"][rows].astype(np.float32), z["text_tokens"][rows])
