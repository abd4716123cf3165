from __future__ import annotations

import open_clip
import pytest
import torch

from dime_nas.errors import ConfigError
from dime_nas.preprocess import CLIP_MEAN
from dime_nas.teacher import (TeacherLoadError, TeacherSpec, load_teacher, save_checkpoint_dir,
                              teacher_forward_count)
from dime_nas.tokens import EOT_TOKEN, SOT_TOKEN, VOCAB_SIZE


@pytest.fixture(scope="module")
def vit_b32_dir(tmp_path_factory):
    """A random-init ViT-B-32 (the real architecture) saved as an open_clip checkpoint folder."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")
    out = tmp_path_factory.mktemp("vit_b32")
    save_checkpoint_dir(model, open_clip.get_model_config("ViT-B-32"), out, model.visual.preprocess_cfg)
    return out, model.eval()


def test_vit_b32_checkpoint_loads_frozen_with_its_tokenizer_and_preprocessing(vit_b32_dir):
    path, reference = vit_b32_dir
    teacher = load_teacher(TeacherSpec(checkpoint=str(path)))
    assert teacher.embed_dim == 512 and teacher.image_size == 224 and teacher.context_length == 77
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    tokens = teacher.tokenize(["a photo of a dog"])
    assert tokens.shape == (1, 77) and tokens[0, 0] == SOT_TOKEN
    assert tuple(teacher.preprocess_cfg["mean"]) == pytest.approx(CLIP_MEAN)
    from PIL import Image

    pixels = teacher.preprocess(Image.new("RGB", (300, 200), (10, 200, 30))).unsqueeze(0)
    assert pixels.shape == (1, 3, 224, 224)
    before = teacher_forward_count()
    with torch.no_grad():
        torch.testing.assert_close(teacher.encode_images(pixels), reference.encode_image(pixels))
        torch.testing.assert_close(teacher.encode_tokens(tokens), reference.encode_text(tokens))
    assert teacher_forward_count() == before + 2 and teacher.forward_passes == 2


def test_identity_is_content_not_location(vit_b32_dir, tmp_path):
    import shutil

    path, _ = vit_b32_dir
    moved = tmp_path / "elsewhere"
    shutil.copytree(path, moved)
    assert load_teacher(TeacherSpec(checkpoint=str(moved))).identity == \
        load_teacher(TeacherSpec(checkpoint=str(path))).identity


def test_state_dict_file_with_model_name(vit_b32_dir, tmp_path):
    path, reference = vit_b32_dir
    torch.save(reference.state_dict(), tmp_path / "weights.pt")
    teacher = load_teacher(TeacherSpec(model="ViT-B-32", checkpoint=str(tmp_path / "weights.pt")))
    assert teacher.identity["model"] == "ViT-B-32" and len(teacher.identity["checkpoint_sha256"]) == 64


def test_teacher_refuses_to_train(tiny_teacher_dir):
    teacher = load_teacher(TeacherSpec(checkpoint=str(tiny_teacher_dir)))
    teacher.model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        teacher.encode_texts(["a red circle"])


@pytest.mark.parametrize("spec, error, message", [
    (TeacherSpec(model="ViT-B-23", pretrained="openai"), ConfigError, "did you mean 'ViT-B-32'"),
    (TeacherSpec(model="ViT-B-32", pretrained="opnai"), ConfigError, "known tags: openai"),
    (TeacherSpec(checkpoint="/no/such/folder"), TeacherLoadError, "not found"),
])
def test_bad_teacher_specs_say_what_is_wrong(spec, error, message):
    with pytest.raises(error, match=message):
        load_teacher(spec)


def test_missing_weights_name_the_offline_alternatives(monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': connection refused")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(TeacherLoadError) as info:
        load_teacher(TeacherSpec(model="ViT-B-32", pretrained="openai"))
    text = str(info.value)
    assert "no network" in text and "teacher.checkpoint" in text and "train-shapes" in text


def test_checkpoint_folder_without_weights(tmp_path):
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {}}')
    with pytest.raises(TeacherLoadError, match="no weights"):
        load_teacher(TeacherSpec(checkpoint=str(tmp_path)))


def test_the_token_ids_are_those_of_open_clips_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    assert (tokenizer.sot_token_id, tokenizer.eot_token_id, tokenizer.vocab_size) == (SOT_TOKEN, EOT_TOKEN, VOCAB_SIZE)
