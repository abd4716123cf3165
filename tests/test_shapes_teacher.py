"""The demo teacher: deterministic training, a loadable open_clip checkpoint, the cached build."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from dime_nas import shapes_teacher
from dime_nas.shapes_teacher import (EXTRA_KEY, TeacherReport, ensure_shapes_teacher, teacher_dir,
                                     train_shapes_teacher)

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
    assert "colour" in report.format()
    meta = json.loads((out / "open_clip_config.json").read_text())[EXTRA_KEY]
    assert meta["config"]["seed"] == TINY.seed and meta["accuracy"] == report.accuracy


def test_same_seed_same_weights(tmp_path):
    short = replace(TINY, steps=20)  # enough steps to move every trained weight
    train_shapes_teacher(short, tmp_path / "one", progress=False)
    train_shapes_teacher(short, tmp_path / "again", progress=False)
    a, b = _state(tmp_path / "one"), _state(tmp_path / "again")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = replace(TINY, seed=4, steps=5)
    train_shapes_teacher(other, tmp_path / "other", progress=False)
    assert not torch.equal(a["visual.conv1.weight"], _state(tmp_path / "other")["visual.conv1.weight"])


def test_unused_token_rows_keep_their_init(built):
    """Only rows the captions use are trained; the rest must be what CLIP's init gave."""
    _, out = built
    torch.manual_seed(TINY.seed)
    init = shapes_teacher.build_model(TINY).token_embedding.weight
    trained = _state(out)["token_embedding.weight"]
    changed = (trained != init).any(dim=1)
    assert 20 < int(changed.sum()) < 200  # the ShapesWorld vocabulary, not 49,408 rows


def test_checkpoint_loads_with_teacher_loader_and_open_clip(built):
    import open_clip

    from dime_nas.data.shapes_tasks import eval_suite
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
    from dime_nas.shapes_teacher import GROUP_SIZE, training_pool

    cfg = replace(TINY, pool_size=4 * GROUP_SIZE, hard_fraction=1.0)
    scenes = shapes_teacher.pool_scenes(cfg)
    assert len(scenes) == 4 * GROUP_SIZE
    for g in range(4):
        group = scenes[g * GROUP_SIZE:(g + 1) * GROUP_SIZE]
        assert all(len(s.objects) == 1 for s in group)
        assert len({(s.objects[0].colour, s.objects[0].size) for s in group}) == 1
        assert len({s.objects[0].shape for s in group}) > 1
    free = shapes_teacher.pool_scenes(replace(cfg, hard_fraction=0.0))
    assert any(len(s.objects) > 1 for s in free)
    images, texts = training_pool(cfg)
    assert images.shape == (len(scenes), TINY.image_size, TINY.image_size, 3)
    assert all(len(t) == shapes_teacher.CAPTIONS_PER_IMAGE for t in texts)


def test_config_rejects_unknown_tower():
    from dime_nas.errors import ConfigError

    with pytest.raises(ConfigError, match="tower"):
        replace(TINY, tower="transformer")
