"""Building a feature cache: the teacher embeds every corpus image and sentence once.

Chunks are written under temporary names and renamed, then recorded in the manifest
(also replaced atomically): a build killed at any point resumes from its last complete
chunk. A manifest whose identity differs from the current teacher/corpora/options is
rebuilt from scratch, and the log says what changed.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...fs import write_atomic
from ...zero_shot import prompt_ensemble
from ..corpus_base import SkipLog
from ..eval_sets import EvalSuite, read_image
from ..image_corpus import ImageSource, decode_image
from ..sentence_corpus import SentenceSource
from .layout import (CacheError, cache_identity, image_stem, read_manifest, save_npy, save_npz, text_stem,
                     write_manifest)
from .read import FeatureCache

_log = logging.getLogger(__name__)


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
    manifest = read_manifest(root)
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
    write_manifest(root, manifest)
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
                stem = image_stem(self.root, idx)
                save_npy(stem.with_suffix(".emb.npy"), np.concatenate(embeds).astype(np.float16))
                save_npy(stem.with_suffix(".pix.npy"), np.stack(pixels))
                write_atomic(stem.with_suffix(".keys.txt"), "\n".join(keys) + "\n")
                state["chunks"].append({"count": len(keys), "raw_end": raw_end, "skipped": skipped})
                done += len(keys)
                self.m["seconds"]["images"] += time.time() - t0
                t0 = time.time()
                write_manifest(self.root, self.m)
        pool.shutdown()
        state["done"] = True
        write_manifest(self.root, self.m)

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
                stem = text_stem(self.root, idx)
                save_npy(stem.with_suffix(".emb.npy"), emb.astype(np.float16))
                save_npy(stem.with_suffix(".tok.npy"), tokens.numpy().astype(np.int32))
                write_atomic(stem.with_suffix(".jsonl"), "".join(json.dumps(s) + "\n" for s in chunk))
                after = (source.log.empty_dropped, source.log.duplicates_dropped, source.log.bad_lines)
                state["chunks"].append({"count": len(chunk), "dropped": dict(zip(
                    ("empty", "duplicate", "bad_line"), (a - b for a, b in zip(after, before))))})
                done += len(chunk)
                bar.update(len(chunk))
                self.m["seconds"]["texts"] += time.time() - t0
                t0 = time.time()
                write_manifest(self.root, self.m)
        state["done"] = True
        write_manifest(self.root, self.m)

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
            save_npz(self.root / "eval" / f"task-{i:03d}.npz",
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
            save_npz(self.root / "eval" / "retrieval.npz", split_score=split_scores([r.files[j] for j in keep]),
                      pixels=np.stack([pixels[j] for j in keep]),
                      image_emb=np.stack([embeds[j] for j in keep]).astype(np.float16),
                      text_emb=self._encode_tokens(tokens).astype(np.float16),
                      text_tokens=tokens.numpy().astype(np.int32))
            retrieval = {"file": "retrieval.npz", "name": r.name, "count": len(keep)}
        self.m["eval"] = {"tasks": tasks, "retrieval": retrieval, "skipped": log.as_dict()["images_skipped"]}
        self.m["seconds"]["eval"] = time.time() - t0
        write_manifest(self.root, self.m)

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
