from __future__ import annotations

import dataclasses
import json
from functools import partial
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dime_nas.config import DistillConfig
from dime_nas.distill.losses import NonFiniteLossError
from dime_nas.distill.trainer import CHECKPOINT_NAME, StudentTowers, distill
from dime_nas.evaluate import evaluate_towers
from dime_nas.optim import param_groups
from dime_nas.student import StudentConfig, TextTowerConfig, VisionTowerConfig
from dime_nas.teacher import teacher_forward_count

STUDENT = StudentConfig(64, VisionTowerConfig(kind="vit", image_size=32, layers=1, width=64, heads=2, mlp_ratio=2.0,
                                              patch_size=8),
                        TextTowerConfig(kind="transformer", layers=1, width=32, heads=2, context_length=12))
SETTINGS = DistillConfig(steps=12, batch_size=16, text_batch_size=16, warmup_steps=3, checkpoint_every=6, seed=3)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_short_run_trains_without_the_teacher(small_cache):
    before = teacher_forward_count()
    model, result = distill(STUDENT, small_cache, SETTINGS, evaluate=partial(evaluate_towers, cache=small_cache))
    assert teacher_forward_count() == before
    assert result.steps == 12 and result.stopped_by == "steps"
    assert {"vl", "pvl", "udist", "text_vl", "text_pvl", "total"} <= set(result.curve[0])
    assert result.curve[-1]["total"] < result.curve[0]["total"]
    assert 0 <= result.metrics["accuracy"] <= 1 and "retrieval" in result.metrics


def test_seconds_budget_stops_the_run(small_cache):
    _, result = distill(STUDENT, small_cache, dataclasses.replace(SETTINGS, steps=10_000, seconds=1.0))
    assert result.stopped_by == "seconds" and 0 < result.steps < 10_000


def test_same_seed_same_model(small_cache):
    a, _ = distill(STUDENT, small_cache, SETTINGS)
    b, _ = distill(STUDENT, small_cache, SETTINGS)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


def test_resume_matches_an_uninterrupted_run_bit_for_bit(small_cache, tmp_path):
    full, full_result = distill(STUDENT, small_cache, SETTINGS, checkpoint_dir=tmp_path / "a")

    class Interrupted(Exception):
        pass

    def crash_at_6(step, metrics):
        raise Interrupted(step)

    with pytest.raises(Interrupted):  # dies right after the step-6 checkpoint
        distill(STUDENT, small_cache, dataclasses.replace(SETTINGS, eval_every=6), checkpoint_dir=tmp_path / "b",
                evaluate=partial(evaluate_towers, cache=small_cache), final_eval=False, on_eval=crash_at_6)
    saved = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=False)
    assert saved["result"].steps == 6
    resumed, result = distill(STUDENT, small_cache, SETTINGS, checkpoint_dir=tmp_path / "b", resume=True)
    assert result.steps == 12
    for (k, v), w in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k
    assert [c["total"] for c in result.curve] == [c["total"] for c in full_result.curve]
    logged = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged] == [c["step"] for c in full_result.curve]  # no duplicates after resume
    assert {"vl", "pvl", "udist", "text_vl", "text_pvl", "total", "lr"} <= set(logged[0])


def test_nan_stops_the_run_naming_step_and_term_and_keeps_checkpoints(small_cache, tmp_path):
    class Poisoned:
        """The cache with one teacher sentence embedding replaced by NaN after step 7's batch."""

        def __init__(self, cache):
            self._cache, self.calls = cache, 0

        def __getattr__(self, name):
            return getattr(self._cache, name)

        @property
        def text_emb(self):
            outer = self

            class Take:
                def take(self, idx):
                    outer.calls += 1
                    out = outer._cache.text_emb.take(idx).astype(np.float32)
                    if outer.calls == 8:
                        out[0, 0] = np.nan
                    return out
            return Take()

    with pytest.raises(NonFiniteLossError) as info:
        distill(STUDENT, Poisoned(small_cache), SETTINGS, checkpoint_dir=tmp_path)
    assert info.value.step == 7 and info.value.term in {"vl", "text_vl", "text_pvl", "total"}
    assert "step 7" in str(info.value)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["result"].steps == 6


def test_no_weight_decay_on_biases_norms_and_embeddings():
    model = StudentTowers(STUDENT)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any("token_embedding" in names[id(p)] for p in no_decay["params"])
    assert any("positional_embedding" in names[id(p)] for p in no_decay["params"])
    assert not any("embedding" in names[id(p)] for p in decay["params"])


_DDP_SCRIPT = r"""
import os, sys, torch, pickle
sys.path.insert(0, {tests!r})
from dime_nas.config import DistillConfig
from dime_nas.data.cache import FeatureCache
from dime_nas.distill.trainer import distill
from test_trainer import STUDENT, SETTINGS
model, result = distill(STUDENT, FeatureCache({cache!r}), SETTINGS)
if int(os.environ.get("RANK", "0")) == 0:
    torch.save({{"state": model.state_dict(), "curve": result.curve}}, {out!r})
"""


def _run_ddp(cache_root: Path, out: Path, nproc: int) -> dict:
    script = out.with_suffix(".py")
    script.write_text(_DDP_SCRIPT.format(tests=str(Path(__file__).parent), cache=str(cache_root), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
           str(script)] if nproc > 1 else [sys.executable, str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


def test_two_process_ddp_matches_one_process(small_cache, tmp_path):
    one = _run_ddp(small_cache.root, tmp_path / "one.pt", 1)
    two = _run_ddp(small_cache.root, tmp_path / "two.pt", 2)
    # Attention key biases get a gradient that is zero in exact arithmetic (softmax ignores a
    # per-row constant); Adam turns its float noise into lr-sized random steps, so they are
    # left out. Everything else must agree to float-summation-order noise.
    for k, v in one["state"].items():
        w = two["state"][k]
        if k.endswith("in_proj_bias"):
            third = len(v) // 3
            v, w = torch.cat([v[:third], v[2 * third:]]), torch.cat([w[:third], w[2 * third:]])
        torch.testing.assert_close(w, v, rtol=1e-3, atol=2e-5, msg=lambda m: f"{k}: {m}")
    np.testing.assert_allclose([c["total"] for c in two["curve"]], [c["total"] for c in one["curve"]], rtol=1e-4)


def test_compact_vocabulary_trains_exactly_like_the_full_embedding():
    import copy

    from dime_nas.compact_vocab import compact, expand
    from dime_nas.student import build_text_tower

    torch.manual_seed(0)
    full = build_text_tower(STUDENT)
    small = copy.deepcopy(full)
    ids = torch.tensor([0, 5, 17, 300, 1000, 49407])
    compact(small, ids)
    tokens = ids[torch.randint(len(ids), (8, STUDENT.text.context_length))]
    for model in (full, small):
        optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-2, fused=True)
        for _ in range(5):
            optimizer.zero_grad()
            model(tokens).pow(2).sum().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    expand(small)
    for (k, v), w in zip(full.state_dict().items(), small.state_dict().values()):
        torch.testing.assert_close(w, v, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_average_last_evals_means_the_last_k_points():
    from dime_nas.distill.trainer import average_last_evals

    evals = [{"step": 2, "accuracy": 0.1}, {"step": 4, "accuracy": 0.2}, {"step": 6, "accuracy": 0.4}]
    final = {"accuracy": 0.6, "note": "x"}
    assert average_last_evals(evals, final, 1) == final  # the default: the final reading only
    assert average_last_evals(evals, final, 3)["accuracy"] == pytest.approx((0.2 + 0.4 + 0.6) / 3)
    assert average_last_evals(evals, final, 3)["note"] == "x"
    assert average_last_evals(evals, final, 10)["accuracy"] == pytest.approx(1.3 / 4)  # all there are


def test_average_last_evals_config_needs_eval_every():
    from dime_nas.config import DistillConfig
    from dime_nas.errors import ConfigError

    with pytest.raises(ConfigError, match="eval_every"):
        DistillConfig(average_last_evals=3)
    with pytest.raises(ConfigError, match=">= 1"):
        DistillConfig(average_last_evals=0, eval_every=5)


def test_distill_reports_the_averaged_score(small_cache):
    base = dataclasses.replace(SETTINGS, eval_every=2, steps=6)
    evaluate = partial(evaluate_towers, cache=small_cache)
    _, plain = distill(STUDENT, small_cache, base, evaluate=evaluate)
    _, averaged = distill(STUDENT, small_cache, dataclasses.replace(base, average_last_evals=3), evaluate=evaluate)
    points = [e["agreement"] for e in plain.evals[-2:]] + [plain.metrics["agreement"]]
    assert averaged.metrics["agreement"] == pytest.approx(sum(points) / 3)


def test_a_convnet_trains_channels_last_and_comes_back_in_the_default_layout(small_cache):
    """oneDNN convolutions run faster on NHWC; export and evaluation get the usual layout back."""
    convnet = StudentConfig(64, VisionTowerConfig(kind="timm", timm_model="test_resnet", image_size=32),
                            TextTowerConfig(kind="teacher"))
    layouts = []

    def layout_during_training(towers):
        conv = next(m for m in towers.visual.modules() if isinstance(m, torch.nn.Conv2d))
        layouts.append(conv.weight.is_contiguous(memory_format=torch.channels_last)
                       and not conv.weight.is_contiguous())
        return {}

    model, _ = distill(convnet, small_cache, dataclasses.replace(SETTINGS, steps=4, eval_every=2),
                       evaluate=layout_during_training)
    assert layouts == [True, False]  # during training (step 2); the final evaluation sees the default layout
    assert all(p.is_contiguous() for p in model.visual.parameters())
    layouts.clear()
    distill(STUDENT, small_cache, dataclasses.replace(SETTINGS, steps=4, eval_every=2), evaluate=layout_during_training)
    assert layouts == [False, False]  # a ViT's single convolution (its patch embedding) keeps the default


def test_a_convnet_resumes_bit_for_bit_from_a_checkpoint_with_contiguous_optimizer_state(small_cache, tmp_path):
    """Checkpoints written before convnets trained channels-last hold contiguous Adam moments."""
    convnet = StudentConfig(64, VisionTowerConfig(kind="timm", timm_model="test_resnet", image_size=32),
                            TextTowerConfig(kind="teacher"))
    settings = dataclasses.replace(SETTINGS, steps=8, checkpoint_every=4)
    full, _ = distill(convnet, small_cache, settings, checkpoint_dir=tmp_path / "a")

    class Interrupted(Exception):
        pass

    def crash_at_4(step, metrics):
        raise Interrupted(step)

    with pytest.raises(Interrupted):
        distill(convnet, small_cache, dataclasses.replace(settings, eval_every=4), checkpoint_dir=tmp_path / "b",
                evaluate=lambda towers: {}, final_eval=False, on_eval=crash_at_4)
    path = tmp_path / "b" / CHECKPOINT_NAME
    saved = torch.load(path, weights_only=False)
    moments = [v for st in saved["optimizer"]["state"].values() for v in st.values()
               if torch.is_tensor(v) and v.dim() == 4]
    assert moments and not all(v.is_contiguous() for v in moments)  # written channels-last ...
    for st in saved["optimizer"]["state"].values():  # ... and as an older version wrote them
        for k, v in st.items():
            st[k] = v.contiguous() if torch.is_tensor(v) else v
    torch.save(saved, path)
    resumed, result = distill(convnet, small_cache, settings, checkpoint_dir=tmp_path / "b", resume=True)
    assert result.steps == 8
    for (k, v), w in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w), k


def test_image_accuracy_scores_the_image_tower_against_the_teachers_class_embeddings(small_cache):
    from dime_nas.evaluate import embed_images, evaluate_student

    model, _ = distill(STUDENT, small_cache, SETTINGS)  # a student with its own text tower
    size = STUDENT.vision.image_size
    by_hand = []
    for task in small_cache.tasks("val"):
        s_img = embed_images(model.visual, task.pixels, size, *small_cache.mean_std)
        predicted = (s_img @ torch.from_numpy(task.class_emb).float().T).argmax(1)
        by_hand.append((predicted == torch.from_numpy(task.labels)).float().mean().item())
    own = evaluate_student(model.visual, small_cache, size, model.text, STUDENT.text.context_length)
    assert own["image_accuracy"] == pytest.approx(np.mean(by_hand))
    teachers = evaluate_student(model.visual, small_cache, size)  # the teacher's text tower: the same thing
    assert teachers["accuracy"] == teachers["image_accuracy"] == pytest.approx(np.mean(by_hand))
