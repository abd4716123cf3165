"""From an experiment config to what a search needs: teacher, corpora, feature cache.

This is the teacher's side of the line: the teacher is loaded here, embeds everything
once into the cache, and is released before any trial runs.
"""
from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path
from typing import Any

from .config import DataConfig, EvalConfig, ExperimentConfig, TeacherConfig
from .fs import user_cache_root, write_atomic

SHAPES_FILES_VERSION = 1  # bump when write_shapes_world's output changes


def teacher_spec(cfg: TeacherConfig, progress: bool = True):
    """A TeacherSpec; the built-in ShapesWorld teacher is built (once) first if needed."""
    from .teacher import TeacherSpec

    if cfg.shapes is not None:
        from .shapes.teacher import ensure_shapes_teacher

        return TeacherSpec(checkpoint=str(ensure_shapes_teacher(cfg.shapes, user_cache_root(), progress=progress)))
    return TeacherSpec(model=cfg.model, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint, cache_dir=cfg.cache_dir)


def shapes_world(data: DataConfig, eval_cfg: EvalConfig, progress: bool = True, build: bool = True) -> Path | None:
    """Write ShapesWorld's files (corpora and/or eval suite) once into the user cache.

    With ``build=False`` missing files are a CacheError instead (a worker never builds).
    """
    if data.shapes is None and eval_cfg.shapes is None:
        return None
    from .shapes.files import write_shapes_world

    d, e = data.shapes, eval_cfg.shapes
    args = {"n_images": d.n_images if d else 0, "n_sentences": d.n_sentences if d else 0,
            "image_size": d.image_size if d else data.pixel_size, "seed": d.seed if d else 1,
            "image_format": d.format if d else "folder", "n_per_class": e.n_per_class if e else 1,
            "n_retrieval": e.retrieval_size if e else 0, "shifts": list(e.shifts) if e else []}
    key = hashlib.sha256(json.dumps({**args, "v": SHAPES_FILES_VERSION}, sort_keys=True).encode()).hexdigest()[:12]
    root = user_cache_root() / "shapes" / f"world-{key}"
    done = root / "COMPLETE"
    if not done.exists() and not build:
        from .data.cache import CacheError

        raise CacheError(f"the ShapesWorld files are missing from {root}: run `dime-nas cache EXPERIMENT.yaml` "
                         "with the same DIME_NAS_CACHE first")
    if not done.exists():
        write_shapes_world(root, progress=progress, **args)
        write_atomic(done, json.dumps(args) + "\n")
    return root


def eval_suite(config: ExperimentConfig, world: Path | None):
    from .data.eval_sets import EvalSuite, load_folder_task, load_retrieval_pairs

    e = config.eval
    tasks, retrieval = [], None
    if e.shapes is not None:
        wanted = {None, *e.shapes.shifts}
        for task_dir in sorted(p for p in (world / "eval").iterdir() if p.is_dir()):
            meta = json.loads((task_dir / "task.json").read_text())
            if meta.get("shift") in wanted:
                tasks.append(load_folder_task(task_dir, max_images=e.max_images_per_task))
        if e.shapes.retrieval_size:
            retrieval = load_retrieval_pairs(world / "retrieval" / "captions.jsonl")
    for t in e.tasks:
        tasks.append(load_folder_task(t.folder, name=t.name, templates=t.templates, classnames=t.classnames,
                                      shifted=t.shifted, max_images=e.max_images_per_task))
    if e.retrieval is not None:
        retrieval = load_retrieval_pairs(e.retrieval.pairs)
    return EvalSuite(tasks, retrieval)


def corpora(config: ExperimentConfig, world: Path | None):
    from .data.corpora import open_image_corpus, open_sentence_corpus

    d = config.data
    if d.shapes is not None:
        images = world / "images"
        if d.shapes.format == "tar":
            images = sorted(str(p) for p in images.glob("shard-*.tar"))
        return open_image_corpus(images), open_sentence_corpus(world / "sentences.txt")
    return open_image_corpus(d.images), open_sentence_corpus(d.sentences, column=d.sentence_column)


def default_cache_dir(config: ExperimentConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir)
    return user_cache_root() / "features" / config.name


def cache_options(config: ExperimentConfig) -> dict[str, Any]:
    """The data settings that, with the teacher and the files, make up a cache's identity."""
    return {"pixel_size": config.data.pixel_size, "max_images": config.data.max_images,
            "max_sentences": config.data.max_sentences, "drop_eval_overlap": config.data.drop_eval_overlap}


def open_shared_cache(config: ExperimentConfig):
    """Open the experiment's complete feature cache read-only, building nothing (what a worker does).

    Raises:
        CacheError: the cache (or the teacher or data it was built from) is missing, or it was
            built for other inputs; the message says which.
    Returns:
        (FeatureCache, teacher_text_cfg).
    """
    from .data.cache import CacheError, cache_mismatch, open_complete_cache
    from .teacher import TeacherSpec, teacher_identity

    world = shapes_world(config.data, config.eval, progress=False, build=False)
    images, sentences = corpora(config, world)
    suite = eval_suite(config, world)
    t = config.teacher
    if t.shapes is not None:
        from .shapes.teacher import is_complete, teacher_dir

        path = teacher_dir(t.shapes, user_cache_root())
        if not is_complete(path):
            raise CacheError(f"the demo teacher is missing from {path}: run `dime-nas cache EXPERIMENT.yaml` "
                             "with the same DIME_NAS_CACHE first")
        spec = TeacherSpec(checkpoint=str(path))
    else:
        spec = TeacherSpec(model=t.model, pretrained=t.pretrained, checkpoint=t.checkpoint, cache_dir=t.cache_dir)
    options = cache_options(config)
    root, identity = default_cache_dir(config), teacher_identity(spec)
    cache = open_complete_cache(root, identity, images, sentences, suite, **options)
    if cache is None:
        raise CacheError(f"feature cache {root}: {cache_mismatch(root, identity, images, sentences, suite, **options)}; "
                         "build it with `dime-nas cache EXPERIMENT.yaml` (workers never build it)")
    cache.test_fraction = config.eval.test_fraction
    return cache, dict(cache.manifest["text_cfg"])


def prepare_cache(config: ExperimentConfig, *, progress: bool = True, teacher: Any = None):
    """Build (or reuse) the experiment's teacher-feature cache and open it.

    A complete cache built for these inputs is opened without loading the teacher.

    Returns:
        (FeatureCache, teacher_text_cfg). The teacher is dropped before returning.
    """
    from .data.cache import build_cache, open_complete_cache
    from .teacher import load_teacher, teacher_identity

    world = shapes_world(config.data, config.eval, progress)
    images, sentences = corpora(config, world)
    suite = eval_suite(config, world)
    options = cache_options(config)
    if teacher is None:
        spec = teacher_spec(config.teacher, progress)
        cache = open_complete_cache(default_cache_dir(config), teacher_identity(spec), images, sentences, suite,
                                    **options)
        if cache is not None:
            cache.test_fraction = config.eval.test_fraction
            return cache, dict(cache.manifest["text_cfg"])
        teacher = load_teacher(spec, device=config.teacher.device)
    cache = build_cache(teacher, images, sentences, suite, default_cache_dir(config),
                        batch_size=config.teacher.batch_size, progress=progress, **options)
    cache.test_fraction = config.eval.test_fraction
    text_cfg = teacher.text_cfg
    del teacher
    gc.collect()
    return cache, text_cfg

