from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch

from conftest import write_experiment
from dime_nas.cli import main
from dime_nas.config import DistillConfig
from dime_nas.distill.trainer import distill
from dime_nas.deliverable import export_student
from dime_nas.student import StudentConfig, TextTowerConfig, VisionTowerConfig
from dime_nas.teacher import TeacherSpec, load_teacher

VIT = VisionTowerConfig(kind="vit", image_size=32, layers=1, width=64, heads=2, mlp_ratio=2.0, patch_size=8)


@pytest.mark.parametrize("text", [TextTowerConfig(kind="teacher"),
                                  TextTowerConfig(kind="transformer", layers=1, width=32, heads=2, context_length=12)])
def test_exported_student_loads_in_plain_open_clip_with_the_same_embeddings(small_cache, tiny_teacher_dir, tmp_path,
                                                                             text):
    config = StudentConfig(64, VIT, text)
    towers, _ = distill(config, small_cache, DistillConfig(steps=3, batch_size=16, text_batch_size=16))
    teacher = load_teacher(TeacherSpec(checkpoint=str(tiny_teacher_dir)))
    card = export_student(config, towers, tmp_path / "export", preprocess_cfg=small_cache.manifest["preprocess"],
                          teacher=teacher)
    images = torch.randn(3, 3, 32, 32)
    tokens = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'export'}")(["a red circle", "two stars", "x"])
    towers.eval()
    with torch.no_grad():
        expected_image = towers.visual(images)
        expected_text = towers.text(tokens) if towers.text is not None else teacher.model.encode_text(tokens)
        plain = open_clip.create_model(f"local-dir:{tmp_path / 'export'}").eval()
        torch.testing.assert_close(plain.encode_image(images), expected_image)
        torch.testing.assert_close(plain.encode_text(tokens), expected_text)
        open_clip.add_model_config(tmp_path / "export" / card["files"]["model_config"])
        named = open_clip.create_model(card["name"], pretrained=str(tmp_path / "export" / card["files"]["checkpoint"]))
        torch.testing.assert_close(named.eval().encode_image(images), expected_image)
    assert card["arch_key"] == config.arch_key and card["teacher"] == teacher.identity
    for f in card["files"].values():
        assert (tmp_path / "export" / f).is_file(), f
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "export" / card["files"]["image_onnx"]))
    onnx_out = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    np.testing.assert_allclose(onnx_out, expected_image.numpy(), atol=1e-4)
    assert card["cost"]["image"]["int8_cosine_mean"] > 0.9


def test_distill_hand_off_and_export_commands(tmp_path, tiny_teacher_dir, monkeypatch):
    exp = write_experiment(tmp_path, tiny_teacher_dir, trials=2)
    monkeypatch.chdir(tmp_path)
    assert main(["search", str(exp), "--quiet"]) == 0
    assert main(["distill", "run", "--select", "best", "--quiet"]) == 0
    results = json.loads((tmp_path / "run" / "distill_results.json").read_text())
    assert len(results) == 1 and results[0]["steps"] == 6
    assert {"accuracy", "latency_ms", "params_m"} <= set(results[0]["full"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Full distillation (short-run proxy vs full run)" in report and results[0]["arch_key"] in report
    # validation and test side by side; the report's headline is the held-out test number
    assert 0 <= results[0]["test"]["accuracy"] <= 1 and "held-out test split" in report
    assert f"**{results[0]['test']['accuracy']:.3f}**" in report
    key = results[0]["arch_key"]
    assert (tmp_path / "run" / "full" / key / "export" / "model_card.json").is_file()
    # distilling the same pick again resumes the finished run: no optimiser step is taken twice
    import torch

    steps_taken, real_step = [], torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step",
                        lambda self, *a, **k: steps_taken.append(1) or real_step(self, *a, **k))
    assert main(["distill", "run", "--select", "best", "--quiet"]) == 0
    again = json.loads((tmp_path / "run" / "distill_results.json").read_text())
    assert len(again) == 1 and again[0]["steps"] == 6 and steps_taken == []
    # export again elsewhere from the checkpoint
    assert main(["export", str(tmp_path / "run" / "full" / key), "--out", str(tmp_path / "again"),
                 "--no-int8"]) == 0
    card = json.loads((tmp_path / "again" / "model_card.json").read_text())
    assert card["arch_key"] == key and card["steps"] == 6
