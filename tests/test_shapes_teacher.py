"""The demo teacher: deterministic training, a loadable open_clip checkpoint, the cached build."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from dime_nas.shapes import teacher as shapes_teacher
from dime_nas.shapes.teacher import (EXTRA_KEY, TeacherReport, ensure_shapes_teacher, teacher_dir,
                                     train_shapes_teacher)
from dime_nas.tokens import VOCAB_SIZE

from conftest import tiny_shapes_teacher_config

TINY = tiny_shapes_teacher_config()


@pytest.fixture(autouse=True)
def small_eval(monkeypatch):
    """Score on fewer images: the tests check behaviour, not the teacher's quality."""
    monkeypatch.setattr(shapes_teacher, "EVAL_PER_CLASS", 12)


@pytest.fixture
def built(tiny_shapes_teacher):
    return tiny_shapes_teacher


def _state(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "open_clip_model.safetensors"))


def test_learns_colour_and_reports(built):
    report, out = built
    assert report.accuracy["colour"] > 0.5  # chance is 0.125
    assert set(report.shifted_accuracy) == {"sketch", "noisy"}
    assert {"shape", "count", "position", "size", "colour-sketch", "size-noisy"} <= set(report.accuracy)
    plain = [a for k, a in report.accuracy.items() if "-" not in k]
    assert report.mean_accuracy == pytest.approx(np.mean(plain))
    assert report.steps_per_second > 0 and report.seconds >= report.train_seconds > 0
    split = [report.render_seconds, report.train_seconds, report.eval_seconds, report.save_seconds]
    assert all(s > 0 for s in split) and sum(split) <= report.seconds
    assert "colour" in report.format() and "render" in report.format() and "save" in report.format()
    meta = json.loads((out / "open_clip_config.json").read_text())[EXTRA_KEY]
    assert meta["config"]["seed"] == TINY.seed and meta["accuracy"] == report.accuracy


def test_same_seed_same_weights(tmp_path):
    short = replace(TINY, steps=20)  # past the first epoch (18 steps): the caption switch is covered
    train_shapes_teacher(short, tmp_path / "one", progress=False)
    train_shapes_teacher(short, tmp_path / "again", progress=False)
    a, b = _state(tmp_path / "one"), _state(tmp_path / "again")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = replace(TINY, seed=4, steps=5)
    train_shapes_teacher(other, tmp_path / "other", progress=False)
    assert not torch.equal(a["visual.conv1.weight"], _state(tmp_path / "other")["visual.conv1.weight"])


def test_trained_rows_are_exactly_the_caption_token_ids(built):
    """The compact table goes back under the tokenizer's ids: trained rows are the captions' ids.

    Every other row must be what CLIP's init gave. A write-back at shifted or permuted
    ids would change other rows and leave some caption ids at their init.
    """
    _, out = built
    torch.manual_seed(TINY.seed)
    init = shapes_teacher.build_model(TINY).token_embedding.weight
    trained = _state(out)["token_embedding.weight"]
    assert trained.shape == init.shape == (VOCAB_SIZE, TINY.text_width)
    changed = torch.nonzero((trained != init).any(dim=1)).ravel()
    _, texts = shapes_teacher.training_pool(TINY)
    used = torch.unique(shapes_teacher._tokenizer(TINY)([t for ts in texts for t in ts]))
    assert 20 < len(used) < 200  # the ShapesWorld vocabulary, not 49,408 rows
    assert torch.equal(changed, used)


def test_checkpoint_loads_with_teacher_loader_and_open_clip(built):
    import open_clip

    from dime_nas.shapes.tasks import eval_suite
    from dime_nas.teacher import TeacherSpec, load_teacher

    _, out = built
    teacher = load_teacher(TeacherSpec(checkpoint=str(out)))
    assert teacher.embed_dim == TINY.embed_dim and teacher.image_size == TINY.image_size
    assert teacher.context_length == TINY.context_length
    plain = open_clip.create_model(f"local-dir:{out}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    task = eval_suite(0, 2, TINY.image_size, tasks=["colour"])[0]
    texts = [p for ps in task.prompts() for p in ps][:6]
    assert torch.equal(teacher.tokenize(texts), shapes_teacher._tokenizer(TINY)(texts))
    pixels = torch.stack([teacher.preprocess(im) for im in task.images])
    # the loader's transform reproduces the training inputs
    raw = np.stack([np.asarray(im) for im in task.images])
    assert torch.allclose(pixels, shapes_teacher._to_input(raw), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(teacher.encode_images(pixels), plain.encode_image(pixels), atol=1e-5)
        assert torch.allclose(teacher.encode_texts(texts), plain.encode_text(tokenizer(texts)), atol=1e-5)


def test_ensure_reuses_and_rebuilds(tmp_path, monkeypatch):
    calls = []
    real = shapes_teacher.train_shapes_teacher

    def counting(cfg, out_dir, *, progress=True):
        calls.append(cfg)
        return real(cfg, out_dir, progress=progress)

    monkeypatch.setattr(shapes_teacher, "train_shapes_teacher", counting)
    cfg = replace(TINY, steps=3)
    first = ensure_shapes_teacher(cfg, tmp_path, progress=False)
    assert first == teacher_dir(cfg, tmp_path) and first.parent == tmp_path / "teachers"
    assert first.name.startswith("shapes-") and len(calls) == 1
    assert ensure_shapes_teacher(cfg, tmp_path, progress=False) == first and len(calls) == 1
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary folder left behind
    second = ensure_shapes_teacher(replace(cfg, seed=5), tmp_path, progress=False)
    assert second != first and len(calls) == 2
    monkeypatch.setenv("DIME_NAS_CACHE", str(tmp_path))
    assert ensure_shapes_teacher(cfg, progress=False) == first and len(calls) == 2


def test_killed_build_leaves_no_checkpoint(tmp_path, monkeypatch):
    def dies(cfg, out_dir, *, progress=True):
        (out_dir / "open_clip_config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes_teacher, "train_shapes_teacher", dies)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes_teacher(TINY, tmp_path, progress=False)
    assert not teacher_dir(TINY, tmp_path).exists()
    assert list((tmp_path / "teachers").iterdir()) == []


def test_pool_hard_negative_groups():
    """Hard groups leave only shape, position and texture to tell their members apart."""
    from dime_nas.shapes import SHAPES
    from dime_nas.shapes.teacher import GROUP_SIZE, training_pool

    cfg = replace(TINY, pool_size=4 * GROUP_SIZE, batch_size=GROUP_SIZE, hard_fraction=0.5)
    pool = shapes_teacher.pool_scenes(cfg)
    assert len(pool) == 4 * GROUP_SIZE
    assert sum(hard for _, hard in pool) == 2 * GROUP_SIZE  # exactly the share asked for
    for g in range(4):
        group = pool[g * GROUP_SIZE:(g + 1) * GROUP_SIZE]
        assert len({hard for _, hard in group}) == 1
        if group[0][1]:
            objects = [scene.objects for scene, _ in group]
            assert all(len(o) == 1 for o in objects)
            assert len({(o[0].colour, o[0].size) for o in objects}) == 1
            assert sorted(o[0].shape for o in objects) == sorted(SHAPES)
    images, texts = training_pool(cfg)
    assert images.shape == (len(pool), TINY.image_size, TINY.image_size, 3)
    for (scene, hard), captions in zip(pool, texts):
        assert len(captions) == shapes_teacher.CAPTIONS_PER_IMAGE
        if hard:  # a hard member's caption names its shape, the one thing unique in its group
            assert all(scene.objects[0].shape in c for c in captions), captions


def test_group_batches_hold_whole_groups_and_cover_each_epoch_once():
    from dime_nas.shapes.teacher import GROUP_SIZE, group_batches

    batches = group_batches(n_groups=5, groups_per_step=2, rng=np.random.default_rng(0))
    seen: dict[int, list[int]] = {}
    for _ in range(6):
        epoch, idx = next(batches)
        assert len(idx) == 2 * GROUP_SIZE
        starts = idx[::GROUP_SIZE]
        assert all((starts % GROUP_SIZE) == 0)
        assert np.array_equal(idx, (starts[:, None] + np.arange(GROUP_SIZE)).ravel())
        seen.setdefault(epoch, []).extend(idx.tolist())
    assert sorted(seen) == [0, 1, 2]  # 2 batches per epoch: the fifth group waits for the next one
    for items in seen.values():
        assert len(items) == len(set(items)) == 4 * GROUP_SIZE


def test_resnet_teacher_builds_deterministically_and_loads(tmp_path):
    """The default tower (open_clip's ModifiedResNet, with BatchNorm) round-trips like the ViT."""
    import open_clip

    from dime_nas.teacher import TeacherSpec, load_teacher

    cfg = replace(TINY, tower="resnet", width=8, steps=3, pool_size=256)
    for name in ("a", "b"):
        train_shapes_teacher(cfg, tmp_path / name, progress=False)
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert any("attnpool" in k for k in a) and any("running_mean" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    teacher = load_teacher(TeacherSpec(checkpoint=str(tmp_path / "a")))
    plain = open_clip.create_model(f"local-dir:{tmp_path / 'a'}").eval()
    pixels = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        assert torch.allclose(teacher.encode_images(pixels), plain.encode_image(pixels), atol=1e-5)


@pytest.mark.parametrize("change, key", [
    ({"tower": "transformer"}, "tower"),
    ({"batch_size": 60}, "batch_size"),
    ({"pool_size": 32}, "pool_size"),
    ({"tower": "resnet", "image_size": 48}, "image_size"),
    ({"tower": "vit", "width": 32}, "width"),
    ({"hard_fraction": 1.5}, "hard_fraction"),
])
def test_config_rejects_what_cannot_train(change, key):
    from dime_nas.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        replace(TINY, **change)
