"""Benchmark: teacher-feature cache build throughput, and the cost of reusing a built cache.

Two teachers, on the same ShapesWorld files (written with ``write_shapes_world``):
(a) the ShapesWorld demo teacher (``ensure_shapes_teacher``; the default config may
take minutes to build the first time, ``--teacher-config small`` uses a quick one);
(b) a random-init open_clip ViT-B-32 saved as a local checkpoint folder (what a real,
big teacher costs per item; its weights do not matter for speed).

For each: the build's wall time and items/s per phase (images, sentences, evaluation
images, from the cache manifest), then the reuse cost: opening the built cache
(``FeatureCache``) and calling ``build_cache`` again on the complete cache (identity
check, no teacher work), as medians over repeats.

Usage: python experiments/bench_cache.py [--teacher-config default|small] [--images N] [--sentences N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dime_nas.config import ShapesTeacherConfig
from dime_nas.data.cache import FeatureCache, build_cache
from dime_nas.data.corpora import open_image_corpus, open_sentence_corpus
from dime_nas.data.eval_sets import EvalSuite, load_folder_task, load_retrieval_pairs
from dime_nas.shapes.files import write_shapes_world
from dime_nas.shapes.teacher import ensure_shapes_teacher
from dime_nas.teacher import load_teacher, save_checkpoint_dir, teacher_forward_count, TeacherSpec

# Builds in well under a minute: for a quick look at the cache, not at the teacher's quality.
SMALL = ShapesTeacherConfig(image_size=32, embed_dim=64, tower="vit", layers=1, width=64, patch_size=8, text_layers=1,
                            text_width=64, context_length=24, steps=100, batch_size=64, pool_size=1000)
PIXEL_SIZE = 64
BATCH_SIZE = 64
CHUNK_SIZE = 256
REUSE_REPEATS = 5


def vit_b32_dir(root: Path) -> Path:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")  # random init: no weights can be downloaded here
    return save_checkpoint_dir(model, open_clip.get_model_config("ViT-B-32"), root / "vit-b-32",
                               model.visual.preprocess_cfg)


def eval_suite(world) -> EvalSuite:
    tasks = []
    for folder in world.eval_tasks:
        shift = json.loads((folder / "task.json").read_text()).get("shift")
        tasks.append(load_folder_task(folder, shifted=shift is not None))
    return EvalSuite(tasks, load_retrieval_pairs(world.retrieval_captions))


def bench_teacher(name: str, checkpoint: Path, world, suite: EvalSuite, out: Path) -> None:
    t0 = time.perf_counter()
    teacher = load_teacher(TeacherSpec(checkpoint=str(checkpoint)))
    load_s = time.perf_counter() - t0
    images, sentences = open_image_corpus(world.root / "images"), open_sentence_corpus(world.sentences)
    forwards = teacher_forward_count()
    t0 = time.perf_counter()
    cache = build_cache(teacher, images, sentences, suite, out, pixel_size=PIXEL_SIZE, chunk_size=CHUNK_SIZE,
                        batch_size=BATCH_SIZE, progress=False)
    build_s = time.perf_counter() - t0
    seconds = cache.manifest["seconds"]
    n_eval = sum(t["count"] for t in cache.manifest["eval"]["tasks"])
    n_ret = (cache.manifest["eval"]["retrieval"] or {}).get("count", 0)
    print(f"\n[{name}] {checkpoint}")
    print(f"  teacher: input {teacher.image_size} px, embed {teacher.embed_dim}, context {teacher.context_length}, "
          f"{sum(p.numel() for p in teacher.model.parameters()) / 1e6:.1f} M params, loaded in {load_s:.2f} s")
    print(f"  build: {build_s:.1f} s wall, {teacher_forward_count() - forwards} teacher batches")
    print(f"    images     {cache.n_images:5d} in {seconds['images']:6.1f} s = {cache.n_images / seconds['images']:7.1f} items/s"
          "  (decode + preprocess + embed + pixel store)")
    print(f"    sentences  {cache.n_texts:5d} in {seconds['texts']:6.1f} s = {cache.n_texts / seconds['texts']:7.1f} items/s"
          "  (tokenize + embed)")
    print(f"    evaluation {n_eval:5d} images, {n_ret} retrieval pairs and prompts in {seconds['eval']:6.1f} s = "
          f"{(n_eval + n_ret) / seconds['eval']:7.1f} images/s")
    print(f"    overall    {(cache.n_images + cache.n_texts + n_eval + n_ret) / build_s:7.1f} items/s")

    opens, rebuilds = [], []
    for _ in range(REUSE_REPEATS):
        t0 = time.perf_counter()
        FeatureCache(out).tasks()
        opens.append(time.perf_counter() - t0)
        forwards = teacher_forward_count()
        t0 = time.perf_counter()
        build_cache(teacher, open_image_corpus(world.root / "images"), open_sentence_corpus(world.sentences),
                    suite, out, pixel_size=PIXEL_SIZE, chunk_size=CHUNK_SIZE, batch_size=BATCH_SIZE, progress=False)
        rebuilds.append(time.perf_counter() - t0)
        assert teacher_forward_count() == forwards, "a complete cache must not run the teacher"
    print(f"  reuse (median of {REUSE_REPEATS}): open FeatureCache + read eval tasks "
          f"{1000 * statistics.median(opens):.1f} ms; build_cache on the complete cache "
          f"{1000 * statistics.median(rebuilds):.1f} ms (identity check of every file, no teacher run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher-config", choices=("default", "small"), default="default")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--sentences", type=int, default=300)
    args = parser.parse_args()

    import open_clip

    print(f"machine: {os.cpu_count()} CPUs | torch {torch.__version__} | {torch.get_num_threads()} torch threads | "
          f"open_clip {open_clip.__version__} | load average (1 min) at start {os.getloadavg()[0]:.2f}")
    print(f"cache: pixel store {PIXEL_SIZE} px, teacher batch {BATCH_SIZE}, chunks of {CHUNK_SIZE}, 2 decode threads")
    cfg = ShapesTeacherConfig() if args.teacher_config == "default" else SMALL
    t0 = time.perf_counter()
    shapes_dir = ensure_shapes_teacher(cfg)
    print(f"ShapesWorld teacher ({args.teacher_config} config: {asdict(cfg)}) ready in "
          f"{time.perf_counter() - t0:.1f} s (0 s means it was cached)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        world = write_shapes_world(root / "world", n_images=args.images, n_sentences=args.sentences,
                                   image_size=PIXEL_SIZE, seed=0, n_per_class=4, n_retrieval=50, progress=False)
        suite = eval_suite(world)
        print(f"ShapesWorld files: {args.images} images, {args.sentences} sentences, {len(suite.tasks)} eval tasks "
              f"({sum(len(t.files) for t in suite.tasks)} images), 50 retrieval pairs, written in "
              f"{time.perf_counter() - t0:.1f} s")
        bench_teacher("ShapesWorld demo teacher", shapes_dir, world, suite, root / "cache-shapes")
        bench_teacher("ViT-B-32, random init", vit_b32_dir(root), world, suite, root / "cache-vit-b-32")
    print(f"\nload average (1 min) at end {os.getloadavg()[0]:.2f} (above ~2 means other work shared the 2 CPUs)")


if __name__ == "__main__":
    main()
