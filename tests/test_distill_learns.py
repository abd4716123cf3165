"""End to end on ShapesWorld: a tiny teacher, its feature cache, and a tiny student that
learns from the cache alone."""
from __future__ import annotations

from functools import partial

import pytest

from dime_nas.config import DistillConfig
from dime_nas.data.cache import build_cache
from dime_nas.data.corpora import open_image_corpus, open_sentence_corpus
from dime_nas.data.eval_sets import EvalSuite, load_folder_task
from dime_nas.shapes.files import write_shapes_world
from dime_nas.distill.trainer import distill
from dime_nas.evaluate import evaluate_towers
from dime_nas.student import StudentConfig, VisionTowerConfig
from dime_nas.teacher import TeacherSpec, load_teacher, teacher_forward_count

STUDENT = StudentConfig(64, VisionTowerConfig(kind="vit", image_size=32, layers=2, width=64, heads=2, mlp_ratio=2.0,
                                              patch_size=8))


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory, tiny_shapes_teacher):
    root = tmp_path_factory.mktemp("shapes_e2e")
    _, teacher_dir = tiny_shapes_teacher
    world = write_shapes_world(root / "world", n_images=768, n_sentences=768, image_size=32, seed=5, n_per_class=12,
                               n_retrieval=0, shifts=[], progress=False)
    teacher = load_teacher(TeacherSpec(checkpoint=str(teacher_dir)))
    colour = load_folder_task(root / "world" / "eval" / "colour")
    cache = build_cache(teacher, open_image_corpus(root / "world" / "images"), open_sentence_corpus(world.sentences),
                        EvalSuite([colour]), root / "features", pixel_size=32, progress=False)
    return cache


def test_short_distillation_from_the_cache_beats_chance_by_far(shapes_cache):
    before = teacher_forward_count()
    evaluate = partial(evaluate_towers, cache=shapes_cache)
    _, untrained = distill(STUDENT, shapes_cache, DistillConfig(steps=0, batch_size=64, text_batch_size=64),
                           evaluate=evaluate)
    _, trained = distill(STUDENT, shapes_cache, DistillConfig(steps=300, batch_size=64, text_batch_size=64,
                                                              lr=3e-3, warmup_steps=20), evaluate=evaluate)
    assert teacher_forward_count() == before  # the student learnt from cached features only
    chance = 1 / 8
    teacher = trained.metrics["teacher/colour/top1"]
    assert teacher > 3 * chance, f"the tiny teacher itself is too weak to test with ({teacher:.2f})"
    assert untrained.metrics["accuracy"] < 2 * chance
    assert trained.metrics["accuracy"] > 3 * chance, trained.metrics
    assert trained.metrics["agreement"] > 0.5
    assert trained.curve[-1]["total"] < trained.curve[0]["total"]
