from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys

import optuna
import pytest
import torch

from dime_nas.space import SearchSpace, resolve_space_path
from dime_nas.student import (StudentConfig, TextTowerConfig, VisionTowerConfig, build_image_tower, build_student,
                              build_text_tower, write_open_clip_config)

SPACES = ["tiny", "edge", "dime-fm-b32"]


def _samples(space: str, n: int, seed: int = 0) -> list[StudentConfig]:
    return list(itertools.islice(SearchSpace.load(resolve_space_path(space)).draws(seed), n))


def _shuffled(d):
    if isinstance(d, dict):
        items = list(d.items())
        random.shuffle(items)
        return {k: _shuffled(v) for k, v in items}
    return d


@pytest.mark.parametrize("space", SPACES)
def test_json_round_trip_and_key_stable_over_dict_order(space):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    random.seed(0)
    configs = _samples(space, 200)
    for config in configs:
        again = StudentConfig.from_json(config.to_json())
        assert again == config and again.arch_key == config.arch_key
        reordered = StudentConfig.from_dict(json.loads(json.dumps(_shuffled(config.to_dict()))))
        assert reordered.arch_key == config.arch_key


def test_key_is_the_same_in_another_process():
    configs = _samples("tiny", 5, seed=1)
    code = ("import sys, json; from dime_nas.student import StudentConfig; "
            "print(' '.join(StudentConfig.from_json(l).arch_key for l in sys.stdin.read().splitlines()))")
    out = subprocess.run([sys.executable, "-c", code], input="\n".join(c.to_json() for c in configs),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [c.arch_key for c in configs]


def test_key_ignores_unused_fields_but_not_real_changes():
    base = VisionTowerConfig(kind="vit", image_size=32, layers=2, width=64, heads=2, mlp_ratio=2.0, patch_size=8)
    a = StudentConfig(256, base)
    b = StudentConfig(256, VisionTowerConfig(**{**base.__dict__, "timm_pool": "max"}))  # unused by a ViT
    c = StudentConfig(256, VisionTowerConfig(**{**base.__dict__, "layers": 3}))
    assert a.arch_key == b.arch_key != c.arch_key
    assert StudentConfig(512, base).arch_key != a.arch_key


@pytest.mark.parametrize("field, value", [("image_size", 64), ("patch_size", 16), ("width", 128), ("heads", 4),
                                          ("mlp_ratio", 4.0), ("layers", 1)])
def test_every_architecture_field_changes_the_key(field, value):
    base = VisionTowerConfig(kind="vit", image_size=32, layers=2, width=64, heads=2, mlp_ratio=2.0, patch_size=8)
    changed = VisionTowerConfig(**{**base.__dict__, field: value})
    assert StudentConfig(256, base).arch_key != StudentConfig(256, changed).arch_key


def test_resolution_and_text_tower_change_the_key():
    timm32 = VisionTowerConfig(kind="timm", image_size=32, timm_model="test_resnet")
    timm64 = VisionTowerConfig(kind="timm", image_size=64, timm_model="test_resnet")
    assert StudentConfig(256, timm32).arch_key != StudentConfig(256, timm64).arch_key
    own = TextTowerConfig(kind="transformer", layers=1, width=64, heads=2, context_length=32)
    keys = {StudentConfig(256, timm32, TextTowerConfig()).arch_key, StudentConfig(256, timm32, own).arch_key,
            StudentConfig(256, timm32, TextTowerConfig(**{**own.__dict__, "context_length": 16})).arch_key}
    assert len(keys) == 3


@pytest.mark.parametrize("bad, message", [
    (dict(kind="vit", image_size=30, layers=2, width=64, heads=2, mlp_ratio=2.0, patch_size=8), "divisible"),
    (dict(kind="vit", image_size=32, layers=2, width=66, heads=4, mlp_ratio=2.0, patch_size=8), "divisible"),
    (dict(kind="vit", image_size=32, width=64, heads=2, mlp_ratio=2.0, patch_size=8), "layers"),
    (dict(kind="cnn", image_size=32), "vision.kind"),
    (dict(kind="timm", image_size=32), "timm_model"),
])
def test_invalid_configs_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        VisionTowerConfig(**bad)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="widht"):
        StudentConfig.from_dict({"embed_dim": 8, "vision": {"kind": "vit", "widht": 3}})


def _tiny_towers():
    grid = SearchSpace.load(resolve_space_path("tiny")).grid()
    images = {json.dumps(c.to_dict()["vision"], sort_keys=True): c for c in grid}
    texts = {json.dumps(c.to_dict()["text"], sort_keys=True): c for c in grid if c.text.kind == "transformer"}
    return list(images.values()), list(texts.values())


def test_every_tiny_image_and_text_tower_builds_and_runs():
    images, texts = _tiny_towers()
    assert len(images) > 100 and len(texts) >= 4
    torch.manual_seed(0)
    with torch.no_grad():
        for c in images:
            out = build_image_tower(c).eval()(torch.randn(2, 3, c.vision.image_size, c.vision.image_size))
            assert out.shape == (2, c.embed_dim) and torch.isfinite(out).all(), c.describe()
        for c in texts:
            tokens = torch.randint(0, c.text.vocab_size, (2, c.text.context_length))
            out = build_text_tower(c).eval()(tokens)
            assert out.shape == (2, c.embed_dim) and torch.isfinite(out).all(), c.describe()


def _build_and_run(configs):
    for c in configs:
        with torch.no_grad():
            out = build_image_tower(c).eval()(torch.randn(1, 3, c.vision.image_size, c.vision.image_size))
        assert out.shape == (1, c.embed_dim), c.describe()


@pytest.mark.parametrize("space", ["edge", "dime-fm-b32"])
def test_larger_spaces_build_on_a_few_samples(space):
    _build_and_run(_samples(space, 2, seed=3))


@pytest.mark.slow
@pytest.mark.parametrize("space", ["edge", "dime-fm-b32"])
def test_larger_spaces_build_on_many_samples(space):
    _build_and_run(_samples(space, 12, seed=4))


def test_written_config_loads_in_plain_open_clip(tmp_path):
    import open_clip

    c = StudentConfig(128, VisionTowerConfig(kind="vit", image_size=32, layers=1, width=64, heads=2, mlp_ratio=2.0,
                                             patch_size=8),
                      TextTowerConfig(kind="transformer", layers=1, width=64, heads=2, context_length=16))
    student = build_student(c)
    path = write_open_clip_config(c, tmp_path / "student-abc.json")
    open_clip.add_model_config(path)
    plain = open_clip.create_model("student-abc")
    assert plain.visual.image_size == (32, 32) and plain.context_length == 16
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in student.state_dict().items()}


def test_student_reusing_teacher_text_needs_its_config():
    c = StudentConfig(64, VisionTowerConfig(kind="timm", image_size=32, timm_model="test_efficientnet"))
    with pytest.raises(ValueError, match="teacher"):
        build_student(c)
    teacher_text = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}
    model = build_student(c, teacher_text)
    assert model.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 64)


@pytest.mark.parametrize("vision", [
    VisionTowerConfig(kind="vit", image_size=32, layers=2, width=64, heads=2, mlp_ratio=2.0, patch_size=8),
    VisionTowerConfig(kind="timm", image_size=32, timm_model="test_convnext2"),
])
def test_towers_are_the_towers_of_the_open_clip_model(vision):
    """The towers a trial trains are the ones open_clip's CLIP builds from the exported config."""
    c = StudentConfig(64, vision, TextTowerConfig(kind="transformer", layers=1, width=32, heads=2, context_length=12))
    torch.manual_seed(0)
    image = build_image_tower(c)
    torch.manual_seed(0)  # CLIP builds its image tower first: the same seed gives the same weights
    clip = build_student(c)
    assert repr(image) == repr(clip.visual)
    for (name, mine), (_, theirs) in zip(image.state_dict().items(), clip.visual.state_dict().items(), strict=True):
        assert torch.equal(mine, theirs), name
    text = {k: v.shape for k, v in build_text_tower(c).state_dict().items()}
    clip_text = {k: v.shape for k, v in clip.state_dict().items() if not k.startswith("visual.") and k != "logit_scale"}
    assert text == clip_text and sum(p.numel() for p in build_text_tower(c).parameters()) == \
        sum(p.numel() for k, p in clip.named_parameters() if not k.startswith("visual.") and k != "logit_scale")
