"""The teacher-feature cache: the teacher embeds every image and sentence once.

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

import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..fs import atomic_path, write_atomic
from ..zero_shot import prompt_ensemble
from .corpus_base import SkipLog
from .eval_sets import EvalSuite, read_image
from .image_corpus import ImageSource, decode_image
from .sentence_corpus import SentenceSource

CACHE_VERSION = 2  # 2: evaluation images carry their split score
_log = logging.getLogger(__name__)


class CacheError(UserError, RuntimeError):
    """A cache folder that cannot be used (incomplete, corrupt, or built for something else)."""


# ---- building ----------------------------------------------------------------------------

class EvalLeakError(CacheError):
    """A corpus image is byte-identical to an evaluation image (the test would leak into training)."""


def eval_file_hashes(suite: EvalSuite) -> dict[str, str]:
    """sha256 of every evaluation and retrieval image file -> its path."""
    files = [p for t in suite.tasks for p, _ in t.files] + (list(suite.retrieval.files) if suite.retrieval else [])
    out = {}
    for path in files:
        try:
            out[hashlib.sha256(Path(path).read_bytes()).hexdigest()] = str(path)
        except OSError:
            continue  # unreadable evaluation files are counted when the evaluation set is read
    return out


def cache_identity(teacher: Any, images: ImageSource, sentences: SentenceSource, eval_suite: EvalSuite,
                   *, pixel_size: int, max_images: int | None, max_sentences: int | None,
                   drop_eval_overlap: bool = False) -> dict[str, Any]:
    """Everything that determines the cache's contents; any change means a rebuild."""
    return {
        "version": CACHE_VERSION,
        "teacher": teacher.identity,
        "preprocess": teacher.preprocess_cfg,
        "context_length": teacher.context_length,
        "images": images.identity(),
        "sentences": sentences.identity(),
        "eval": hashlib.sha256(json.dumps(eval_suite.identity(), sort_keys=True).encode()).hexdigest(),
        "pixel_size": pixel_size,
        "max_images": max_images,
        "max_sentences": max_sentences,
        "drop_eval_overlap": drop_eval_overlap,
    }


def cache_mismatch(out_dir: str | Path, teacher_identity: dict[str, Any] | None, images: ImageSource,
                   sentences: SentenceSource, eval_suite: EvalSuite, *, pixel_size: int,
                   max_images: int | None = None, max_sentences: int | None = None,
                   drop_eval_overlap: bool = False) -> str | None:
    """Why the cache in ``out_dir`` cannot serve these inputs (missing, incomplete, built for a
    different key), or None when it can. Needs only the teacher's identity, not the teacher."""
    manifest = _read_manifest(Path(out_dir))
    if manifest is None:
        return "missing"
    if not manifest.get("complete") or "text_cfg" not in manifest:
        return "incomplete (a build was interrupted or is running)"
    if teacher_identity is None:
        return "the teacher's identity cannot be worked out without loading it"
    recorded = manifest.get("identity", {})
    expected = {"version": CACHE_VERSION, "teacher": teacher_identity, "images": images.identity(),
                "sentences": sentences.identity(),
                "eval": hashlib.sha256(json.dumps(eval_suite.identity(), sort_keys=True).encode()).hexdigest(),
                "pixel_size": pixel_size, "max_images": max_images, "max_sentences": max_sentences,
                "drop_eval_overlap": drop_eval_overlap}
    for key, value in expected.items():
        if recorded.get(key) != value:
            return f"built for a different {key}"
    return None


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


def build_cache(teacher: Any, images: ImageSource, sentences: SentenceSource, eval_suite: EvalSuite,
                out_dir: str | Path, *, pixel_size: int, chunk_size: int = 1024, batch_size: int = 64,
                max_images: int | None = None, max_sentences: int | None = None, progress: bool = True,
                workers: int = 2, drop_eval_overlap: bool = False) -> FeatureCache:
    """Build (or resume, or reuse) the cache in ``out_dir`` and open it.

    Reuse needs an identical identity; a different one wipes the folder first. Builds of
    one folder by several processes take turns (a lock file beside it): the second finds
    the first's complete cache and reuses it.
    """
    root = Path(out_dir)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.build-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_cache(teacher, images, sentences, eval_suite, root, pixel_size=pixel_size,
                            chunk_size=chunk_size, batch_size=batch_size, max_images=max_images,
                            max_sentences=max_sentences, progress=progress, workers=workers,
                            drop_eval_overlap=drop_eval_overlap)


def _build_cache(teacher: Any, images: ImageSource, sentences: SentenceSource, eval_suite: EvalSuite, root: Path,
                 *, pixel_size: int, chunk_size: int, batch_size: int, max_images: int | None,
                 max_sentences: int | None, progress: bool, workers: int, drop_eval_overlap: bool) -> FeatureCache:
    identity = cache_identity(teacher, images, sentences, eval_suite, pixel_size=pixel_size,
                              max_images=max_images, max_sentences=max_sentences,
                              drop_eval_overlap=drop_eval_overlap)
    manifest = _read_manifest(root)
    if manifest is not None and manifest.get("identity") != identity:
        changed = sorted(k for k in identity if manifest.get("identity", {}).get(k) != identity[k])
        _log.warning("cache %s was built for a different %s: rebuilding", root, ", ".join(changed) or "version")
        shutil.rmtree(root)
        manifest = None
    if manifest is not None and manifest.get("complete"):
        return FeatureCache(root)
    if manifest is None:
        manifest = {"identity": identity, "complete": False, "chunk_size": chunk_size, "pixel_size": pixel_size,
                    "embed_dim": teacher.embed_dim, "context_length": teacher.context_length,
                    "text_cfg": teacher.text_cfg,
                    "preprocess": teacher.preprocess_cfg, "teacher": teacher.identity,
                    "images": {"chunks": [], "done": False}, "texts": {"chunks": [], "done": False},
                    "eval": None, "seconds": {"images": 0.0, "texts": 0.0, "eval": 0.0}, "resumed": 0}
    else:
        manifest["resumed"] += 1
        _log.info("resuming cache build in %s", root)
    builder = _Builder(teacher, root, manifest, chunk_size, batch_size, pixel_size, progress, workers,
                       eval_file_hashes(eval_suite), drop_eval_overlap)
    builder.images(images, max_images)
    builder.texts(sentences, max_sentences)
    builder.evaluation(eval_suite)
    manifest["complete"] = True
    manifest["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write_manifest(root, manifest)
    return FeatureCache(root)


class _Builder:
    def __init__(self, teacher, root, manifest, chunk_size, batch_size, pixel_size, progress, workers,
                 eval_hashes: dict[str, str], drop_eval_overlap: bool):
        self.teacher, self.root, self.m = teacher, root, manifest
        self.chunk_size, self.batch_size, self.pixel_size = chunk_size, batch_size, pixel_size
        self.progress, self.workers = progress, workers
        self.eval_hashes, self.drop_eval_overlap = eval_hashes, drop_eval_overlap

    def _bar(self, total: int | None, desc: str, initial: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, initial=initial, unit="item", disable=not self.progress,
                    dynamic_ncols=True, smoothing=0.1)

    def images(self, source: ImageSource, limit: int | None) -> None:
        state = self.m["images"]
        if state["done"]:
            return
        done = sum(c["count"] for c in state["chunks"])
        start = state["chunks"][-1]["raw_end"] if state["chunks"] else 0
        total = source.count() if limit is None else min(limit, source.count())
        t0, pool = time.time(), ThreadPoolExecutor(self.workers)
        raw_iter = source.iter_raw(start)
        with self._bar(total, "teacher: images", done) as bar:
            while limit is None or done < limit:
                before = Counter(source.log.images_skipped)
                want = self.chunk_size if limit is None else min(self.chunk_size, limit - done)
                keys, pixels, embeds, raw_end = self._image_chunk(raw_iter, source, want, pool, bar)
                if not keys:
                    break
                skipped = dict(Counter(source.log.images_skipped) - before)
                idx = len(state["chunks"])
                stem = self.root / "images" / f"{idx:06d}"
                _save_npy(stem.with_suffix(".emb.npy"), np.concatenate(embeds).astype(np.float16))
                _save_npy(stem.with_suffix(".pix.npy"), np.stack(pixels))
                _save_text(stem.with_suffix(".keys.txt"), "\n".join(keys) + "\n")
                state["chunks"].append({"count": len(keys), "raw_end": raw_end, "skipped": skipped})
                done += len(keys)
                self.m["seconds"]["images"] += time.time() - t0
                t0 = time.time()
                _write_manifest(self.root, self.m)
        pool.shutdown()
        state["done"] = True
        _write_manifest(self.root, self.m)

    def _image_chunk(self, raw_iter: Iterator, source: ImageSource, want: int, pool, bar):
        keys, pixels, embeds, raw_end = [], [], [], 0
        while len(keys) < want:
            batch = [r for _, r in zip(range(min(self.batch_size, want - len(keys))), raw_iter)]
            if not batch:
                break
            raw_end = batch[-1].index + 1
            decoded = list(pool.map(lambda r: self._prepare(r, source), batch))
            good = [(r.key, pix, x) for r, (pix, x) in zip(batch, decoded) if x is not None]
            if good:
                embeds.append(self.teacher.encode_images(torch.stack([g[2] for g in good])).numpy())
                keys += [g[0] for g in good]
                pixels += [g[1] for g in good]
            bar.update(len(good))
        return keys, pixels, embeds, raw_end

    def _prepare(self, raw, source: ImageSource):
        twin = self.eval_hashes.get(hashlib.sha256(raw.data).hexdigest()) if self.eval_hashes else None
        if twin is not None:
            if not self.drop_eval_overlap:
                raise EvalLeakError(f"corpus image {raw.key} is identical to evaluation image {twin}: training on it "
                                    "would leak the evaluation set. Remove it from the corpus, or set "
                                    "data.drop_eval_overlap: true to drop such images (they are counted)")
            source.log.skip_image(raw.key, "in_evaluation_set", twin)
            return None, None
        image = decode_image(raw.data, source.log, raw.key)
        if image is None:
            return None, None
        return to_pixel_store(image, self.pixel_size), self.teacher.preprocess(image)

    def texts(self, source: SentenceSource, limit: int | None) -> None:
        state = self.m["texts"]
        if state["done"]:
            return
        done = sum(c["count"] for c in state["chunks"])
        t0 = time.time()
        stream = source.iter_sentences(start=done)
        with self._bar(limit, "teacher: sentences", done) as bar:
            while limit is None or done < limit:
                want = self.chunk_size if limit is None else min(self.chunk_size, limit - done)
                before = (source.log.empty_dropped, source.log.duplicates_dropped, source.log.bad_lines)
                chunk = [s for _, s in zip(range(want), stream)]
                if not chunk:
                    break
                tokens = self.teacher.tokenize(chunk)
                emb = np.concatenate([self.teacher.encode_tokens(tokens[i:i + self.batch_size]).numpy()
                                      for i in range(0, len(chunk), self.batch_size)])
                idx = len(state["chunks"])
                stem = self.root / "texts" / f"{idx:06d}"
                _save_npy(stem.with_suffix(".emb.npy"), emb.astype(np.float16))
                _save_npy(stem.with_suffix(".tok.npy"), tokens.numpy().astype(np.int32))
                _save_text(stem.with_suffix(".jsonl"), "".join(json.dumps(s) + "\n" for s in chunk))
                after = (source.log.empty_dropped, source.log.duplicates_dropped, source.log.bad_lines)
                state["chunks"].append({"count": len(chunk), "dropped": dict(zip(
                    ("empty", "duplicate", "bad_line"), (a - b for a, b in zip(after, before))))})
                done += len(chunk)
                bar.update(len(chunk))
                self.m["seconds"]["texts"] += time.time() - t0
                t0 = time.time()
                _write_manifest(self.root, self.m)
        state["done"] = True
        _write_manifest(self.root, self.m)

    def evaluation(self, suite: EvalSuite) -> None:
        if self.m["eval"] is not None:
            return
        t0, log, tasks = time.time(), SkipLog(), []
        for i, task in enumerate(suite.tasks):
            pixels, embeds = self._eval_images([p for p, _ in task.files], log)
            keep = [j for j, e in enumerate(embeds) if e is not None]
            prompts = [[t.format(c) for t in task.templates] for c in task.classnames]
            tokens = self.teacher.tokenize([p for ps in prompts for p in ps])
            prompt_emb = self._encode_tokens(tokens).reshape(len(task.classnames), len(task.templates), -1)
            _save_npz(self.root / "eval" / f"task-{i:03d}.npz",
                      split_score=split_scores([task.files[j][0] for j in keep]),
                      pixels=np.stack([pixels[j] for j in keep]),
                      image_emb=np.stack([embeds[j] for j in keep]).astype(np.float16),
                      labels=np.array([task.files[j][1] for j in keep], dtype=np.int64),
                      class_emb=prompt_ensemble(torch.from_numpy(prompt_emb)).numpy(),
                      prompt_tokens=tokens.numpy().astype(np.int32).reshape(len(task.classnames),
                                                                           len(task.templates), -1))
            tasks.append({"file": f"task-{i:03d}.npz", "name": task.name, "classnames": task.classnames,
                          "templates": task.templates, "shifted": task.shifted, "count": len(keep)})
        retrieval = None
        if suite.retrieval is not None:
            r = suite.retrieval
            pixels, embeds = self._eval_images(r.files, log)
            keep = [j for j, e in enumerate(embeds) if e is not None]
            tokens = self.teacher.tokenize([r.captions[j] for j in keep])
            _save_npz(self.root / "eval" / "retrieval.npz", split_score=split_scores([r.files[j] for j in keep]),
                      pixels=np.stack([pixels[j] for j in keep]),
                      image_emb=np.stack([embeds[j] for j in keep]).astype(np.float16),
                      text_emb=self._encode_tokens(tokens).astype(np.float16),
                      text_tokens=tokens.numpy().astype(np.int32))
            retrieval = {"file": "retrieval.npz", "name": r.name, "count": len(keep)}
        self.m["eval"] = {"tasks": tasks, "retrieval": retrieval, "skipped": log.as_dict()["images_skipped"]}
        self.m["seconds"]["eval"] = time.time() - t0
        _write_manifest(self.root, self.m)

    def _eval_images(self, paths: list[Path], log) -> tuple[list, list]:
        pixels, embeds = [None] * len(paths), [None] * len(paths)
        for s in range(0, len(paths), self.batch_size):
            batch = [(j, read_image(paths[j], log)) for j in range(s, min(s + self.batch_size, len(paths)))]
            batch = [(j, im) for j, im in batch if im is not None]
            if not batch:
                continue
            emb = self.teacher.encode_images(torch.stack([self.teacher.preprocess(im) for _, im in batch])).numpy()
            for (j, im), e in zip(batch, emb):
                pixels[j], embeds[j] = to_pixel_store(im, self.pixel_size), e
        return pixels, embeds

    def _encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        return np.concatenate([self.teacher.encode_tokens(tokens[i:i + self.batch_size]).numpy()
                               for i in range(0, len(tokens), self.batch_size)])


def split_scores(paths: list[Path]) -> np.ndarray:
    """A number in [0, 1) per evaluation image, from its class folder and file name only.

    The same file lands in the same split on every machine and in every run; images with
    a score below the test fraction form the held-out test split, the rest validation.
    """
    keys = [f"{Path(p).parent.name}/{Path(p).name}" for p in paths]
    return np.array([int(hashlib.sha256(k.encode()).hexdigest()[:8], 16) / 2 ** 32 for k in keys], dtype=np.float64)


def to_pixel_store(image: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to ``size`` (bicubic) and centre-crop: (size, size, 3) uint8."""
    w, h = image.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


# ---- files ---------------------------------------------------------------------------------

def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _save_text(path: Path, text: str) -> None:
    write_atomic(path, text)


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    _save_text(root / "manifest.json", json.dumps(manifest, indent=1) + "\n")


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # unreadable: treated as built for something else, so rebuilt


# ---- reading ------------------------------------------------------------------------------

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
        manifest = _read_manifest(self.root)
        if not manifest or not manifest.get("complete"):
            raise CacheError(f"{self.root} is not a complete feature cache (build it with `dime-nas cache`)")
        self.manifest = manifest
        img, txt = manifest["images"]["chunks"], manifest["texts"]["chunks"]
        if not img or not txt:
            raise CacheError(f"feature cache {self.root} holds no images or no sentences: check the corpora")
        s = self.pixel_size
        if in_memory is None:  # small caches are gathered faster from RAM
            in_memory = sum(c["count"] for c in img) * s * s * 3 < (2 << 30)
        stems_i = [self.root / "images" / f"{i:06d}" for i in range(len(img))]
        stems_t = [self.root / "texts" / f"{i:06d}" for i in range(len(txt))]
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
        from ..preprocess import CLIP_MEAN, CLIP_STD

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
                for k in (self.root / "images" / f"{i:06d}.keys.txt").read_text().splitlines()]

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
