from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch

from conftest import write_experiment
from dime_nas import api
from dime_nas.cli import main
from dime_nas.errors import ConfigError
from dime_nas.handoff import choose_trials
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


def test_distill_hand_off_and_export(tmp_path, tiny_teacher_dir, monkeypatch):
    exp = write_experiment(tmp_path, tiny_teacher_dir, trials=2)
    monkeypatch.chdir(tmp_path)
    run = api.search(exp, progress=False).run
    results = api.distill_selected(run, "best", progress=False)
    assert json.loads(run.distill_results.read_text()) == results
    assert len(results) == 1 and results[0]["steps"] == 6
    assert {"accuracy", "latency_ms", "params_m"} <= set(results[0]["full"])
    report = run.report_md.read_text()
    assert "Full distillation (short-run proxy vs full run)" in report and results[0]["arch_key"] in report
    # validation and test side by side; the report's headline is the held-out test number
    assert 0 <= results[0]["test"]["accuracy"] <= 1 and "held-out test split" in report
    assert f"**{results[0]['test']['accuracy']:.3f}**" in report
    key = results[0]["arch_key"]
    assert (run.export_dir(key) / "model_card.json").is_file() and results[0]["export"] == str(run.export_dir(key))
    recipe = json.loads((run.export_dir(key) / "model_card.json").read_text())["distill"]
    assert recipe["steps"] == 6 and not {"seeds", "text_tower_step_scale"} & set(recipe)  # the full run's recipe only
    # distilling the same pick again resumes the finished run: no optimiser step is taken twice
    import torch

    steps_taken, real_step = [], torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step",
                        lambda self, *a, **k: steps_taken.append(1) or real_step(self, *a, **k))
    again = api.distill_selected("run", "best", progress=False)
    assert len(again) == 1 and again[0]["steps"] == 6 and steps_taken == []
    # export again elsewhere from the checkpoint (the CLI prints where)
    assert main(["export", str(run.full_run(key)), "--out", str(tmp_path / "again"), "--no-int8"]) == 0
    card = json.loads((tmp_path / "again" / "model_card.json").read_text())
    assert card["arch_key"] == key and card["steps"] == 6
    with pytest.raises(ConfigError, match="not inside a dime-nas run directory"):
        api.export(tmp_path / "again" / "model_card.json")


def test_each_select_mode_distils_the_students_it_names(tmp_path, tiny_teacher_dir):
    exp = write_experiment(tmp_path, tiny_teacher_dir, trials=3, budgets=["params_m <= 1"])
    outcome = api.search(exp, out=tmp_path / "run", progress=False)
    run = outcome.run
    feasible = [t.number for t in outcome.study.trials if t.user_attrs.get("status") == "ok"]
    assert feasible and outcome.summary.get("knee") is not None
    for select in ("knee", "budget", "top:2", f"trial:{feasible[-1]}"):
        picks = choose_trials(run, select)
        results = {r["arch_key"]: r for r in api.distill_selected(run, select, steps=2, export=False, progress=False)}
        for p in picks:
            assert results[p["arch_key"]]["trial"] == p["trial"] and results[p["arch_key"]]["steps"] == 2, select
    knee = choose_trials(run, "knee")
    assert [p["trial"] for p in knee] == [outcome.summary["knee"]]
    assert [p["trial"] for p in choose_trials(run, f"trial:{feasible[-1]}")] == [feasible[-1]]
    assert len(choose_trials(run, "top:2")) <= 2
    with pytest.raises(ConfigError, match="unknown selection"):
        api.distill_selected(run, "elbow")
