"""The weight-sharing supernet: subnets as plain open_clip students, training that resumes bit for bit,
and searches that score students with inherited weights."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dime_nas.config import LossConfig, SupernetConfig
from dime_nas.errors import ConfigError
from dime_nas.space import SearchSpace
from dime_nas.student import StudentConfig
from dime_nas.supernet.elastic import ElasticCLIP, SupernetShape
from dime_nas.supernet.extract import extract
from dime_nas.supernet.train import extreme_students, train_supernet

# every dimension elastic, both text-tower kinds; the teacher of `small_cache` embeds in 64 dimensions
ELASTIC_SPACE = """
name: elastic-test
embed_dim: 64
image:
  kind: vit
  vit:
    layers: [1, 2]
    width: [32, 64]
    heads: [2, 4]
    mlp_ratio: [2.0, 4.0]
    patch_size: [8, 16]
    image_size: [16, 32]
text:
  kind: [teacher, transformer]
  transformer: {layers: [1, 2], width: [32, 64], heads: 2, context_length: 16}
constraints:
  - (image.vit.image_size // image.vit.patch_size) ** 2 <= 16
"""
TINY_RECIPE = SupernetConfig(steps=8, batch_size=16, text_batch_size=16, warmup_steps=2, checkpoint_every=3)


@pytest.fixture
def space(tmp_path) -> SearchSpace:
    (tmp_path / "elastic.yaml").write_text(ELASTIC_SPACE)
    return SearchSpace.load(tmp_path / "elastic.yaml")


@pytest.fixture
def supernet(space) -> ElasticCLIP:
    """A supernet with every weight perturbed away from its initialisation (LayerNorms included)."""
    torch.manual_seed(0)
    net = ElasticCLIP(SupernetShape.of_space(space, 64))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def _students(space: SearchSpace, n: int = 6) -> list[StudentConfig]:
    largest, smallest = extreme_students(space, 64)
    rng = np.random.default_rng(3)
    return [largest, smallest] + [space.sample(rng, 64) for _ in range(n)]


def _tokens(context_length: int) -> torch.Tensor:
    tokens = torch.randint(1, 400, (3, context_length))
    tokens[:, 6] = 49407  # end of text: the pooled position
    return tokens


def test_the_extreme_students_are_the_largest_and_smallest_of_the_space(space):
    largest, smallest = extreme_students(space, 64)
    assert largest.describe() == "vit L2 W64 H4 mlp4 p8 @32px + text L2 W64 H2 ctx16"
    assert smallest.describe() == "vit L1 W32 H2 mlp2 p16 @16px + text L1 W32 H2 ctx16"


def test_every_drawn_subnet_is_a_student_of_the_space(space):
    """Drawn by the space's own distribution, through its constraint narrowing: never one outside it."""
    students = _students(space, 300)
    assert all(space.contains(s) for s in students)
    assert {s.vision.image_size // s.vision.patch_size for s in students} == {1, 2, 4}  # never the 8x8 grid
    assert {s.text.kind for s in students} == {"teacher", "transformer"}
    outside = dataclasses.replace(students[0], vision=dataclasses.replace(students[0].vision, patch_size=4,
                                                                          image_size=32))
    assert not space.contains(outside)


def test_an_extracted_subnet_is_a_scratch_students_structure_with_the_supernets_embeddings(space, supernet):
    """Same parameter names and shapes as `build_*_tower`, same embeddings as the supernet's own forward."""
    from dime_nas.distill.trainer import StudentTowers

    for student in _students(space):
        towers = extract(supernet, student)
        scratch = StudentTowers(student)
        assert {k: v.shape for k, v in towers.state_dict().items()} == \
            {k: v.shape for k, v in scratch.state_dict().items()}
        images = torch.randn(3, 3, student.vision.image_size, student.vision.image_size)
        with torch.no_grad():
            torch.testing.assert_close(towers.visual(images), supernet.encode_image(images, student.vision),
                                       atol=1e-5, rtol=0)
            if student.text.kind == "transformer":
                tokens = _tokens(student.text.context_length)
                torch.testing.assert_close(towers.text(tokens), supernet.encode_text(tokens, student.text),
                                           atol=1e-5, rtol=0)


def test_a_subnet_scored_through_the_supernet_embeds_as_its_extracted_model(space, supernet):
    """Scoring reads a student through the supernet (no copy): the same embeddings as the extracted model."""
    from dime_nas.supernet.elastic import SubnetTowers

    for student in _students(space, 3):
        view, towers = SubnetTowers(supernet, student), extract(supernet, student)
        images = torch.randn(2, 3, student.vision.image_size, student.vision.image_size)
        with torch.no_grad():
            torch.testing.assert_close(view.visual(images), towers.visual(images), atol=1e-5, rtol=0)
            if student.text.kind == "transformer":
                tokens = _tokens(student.text.context_length)
                torch.testing.assert_close(view.text(tokens), towers.text(tokens), atol=1e-5, rtol=0)
            else:
                assert view.text is None


def test_fine_tuning_before_scoring_trains_the_extracted_student(space, supernet, small_cache):
    from dime_nas.config import DistillConfig
    from dime_nas.search.evaluators import score_subnet

    student = _students(space)[0]
    settings = DistillConfig(steps=3, batch_size=16, text_batch_size=16, lr=1e-3, warmup_steps=0)
    tuned = score_subnet(supernet, student, small_cache, settings)
    plain = score_subnet(supernet, student, small_cache, dataclasses.replace(settings, steps=0))
    assert tuned.train_steps == 3 and {"extract_s", "train_s", "eval_s"} <= set(tuned.timings)
    assert plain.train_steps == 0 and set(plain.timings) == {"eval_s"}
    assert tuned.metrics["teacher_kl"] != plain.metrics["teacher_kl"]


def test_subnets_of_different_shapes_read_different_weights(space, supernet):
    """Each choice changes the computation: a slice taken the wrong way would make two of them agree."""
    base = _students(space)[0]  # the largest
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = supernet.encode_image(images, base.vision)
        for change in ({"layers": 1}, {"width": 32, "heads": 2}, {"heads": 2}, {"mlp_ratio": 2.0},
                       {"patch_size": 16}):
            other = dataclasses.replace(base.vision, **change)
            assert not torch.allclose(out, supernet.encode_image(images, other), atol=1e-4), change


def test_a_subnet_outside_the_supernet_is_refused_naming_the_dimension(supernet):
    wide = StudentConfig.from_dict({"embed_dim": 64, "vision": {"kind": "vit", "image_size": 32, "patch_size": 8,
                                    "layers": 1, "width": 128, "heads": 2, "mlp_ratio": 2.0}})
    with pytest.raises(ConfigError, match="image width 128 > 64"):
        extract(supernet, wide)


def test_a_space_with_timm_trunks_has_no_supernet(tmp_path):
    (tmp_path / "mixed.yaml").write_text(ELASTIC_SPACE.replace("kind: vit", "kind: [vit, timm]").replace(
        "    image_size: [16, 32]\n", "    image_size: [16, 32]\n  timm: {model: [test_resnet], image_size: [32]}\n"))
    with pytest.raises(ConfigError, match="search.evaluator.*timm"):
        SupernetShape.of_space(SearchSpace.load(tmp_path / "mixed.yaml"), 64)


def test_training_killed_and_resumed_continues_bit_for_bit(space, small_cache, tmp_path):
    whole, run = train_supernet(space, small_cache, TINY_RECIPE, LossConfig(), checkpoint_dir=tmp_path / "a")
    train_supernet(space, small_cache, TINY_RECIPE, LossConfig(), checkpoint_dir=tmp_path / "b", stop_after=4)
    resumed, run_b = train_supernet(space, small_cache, TINY_RECIPE, LossConfig(), checkpoint_dir=tmp_path / "b")
    assert run.steps == run_b.steps == 8
    # the kill fell between checkpoints (every 3): the resumed run redid step 4 from the step-3 checkpoint
    assert [c["largest"] for c in run.curve] == [c["largest"] for c in run_b.curve]
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert run.subnets_trained >= 8 * 4  # largest, smallest and two drawn image subnets per step, plus text ones


def test_training_lowers_the_loss_of_the_largest_and_smallest_subnets(space, small_cache, tmp_path):
    recipe = dataclasses.replace(TINY_RECIPE, steps=40, lr=3e-3, checkpoint_every=40)
    _, run = train_supernet(space, small_cache, recipe, LossConfig(), checkpoint_dir=tmp_path)
    first, last = run.curve[0], run.curve[-1]
    assert last["largest"] < 0.8 * first["largest"] and last["smallest"] < 0.8 * first["smallest"]


def test_a_nan_loss_names_the_subnet_and_keeps_the_checkpoint(space, small_cache, tmp_path, monkeypatch):
    from dime_nas.distill.losses import NonFiniteLossError
    from dime_nas.supernet import elastic

    train_supernet(space, small_cache, TINY_RECIPE, LossConfig(), checkpoint_dir=tmp_path, stop_after=3)
    saved = (tmp_path / "supernet.pt").read_bytes()
    monkeypatch.setattr(elastic.ElasticCLIP, "encode_image", lambda self, x, v: torch.full((len(x), 64), float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"step 3.*image \(vit L2 W64"):
        train_supernet(space, small_cache, TINY_RECIPE, LossConfig(), checkpoint_dir=tmp_path)
    assert (tmp_path / "supernet.pt").read_bytes() == saved


def test_an_extracted_subnet_exports_to_onnx_and_loads_in_plain_open_clip(space, supernet, small_cache, tmp_path):
    import open_clip
    import onnxruntime as ort

    from dime_nas.deliverable import export_student

    student = next(s for s in _students(space) if s.text.kind == "transformer" and s.vision.image_size == 32)
    towers = extract(supernet, student).eval()
    card = export_student(student, towers, tmp_path / "export", preprocess_cfg=small_cache.manifest["preprocess"],
                          int8=False)
    assert card["cost"]["image"]["onnx_parity_max_abs_diff"] < 1e-4
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'export'}")
    images, tokens = torch.randn(2, 3, 32, 32), _tokens(student.text.context_length)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_image(images), supernet.encode_image(images, student.vision),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(tokens), supernet.encode_text(tokens, student.text),
                                   atol=1e-5, rtol=0)
    session = ort.InferenceSession(str(tmp_path / "export" / card["files"]["image_onnx"]))
    name = session.get_inputs()[0].name
    np.testing.assert_allclose(session.run(None, {name: images.numpy()})[0],
                               supernet.encode_image(images, student.vision).detach().numpy(), atol=1e-4)


def _supernet_experiment(tmp_path: Path, teacher: Path, extra: str = "") -> Path:
    from conftest import write_experiment

    exp = write_experiment(tmp_path, teacher, trials=4, extra=extra + """
supernet: {steps: 6, batch_size: 16, text_batch_size: 16, warmup_steps: 1, checkpoint_every: 3}
""")
    (tmp_path / "space.yaml").write_text(ELASTIC_SPACE.replace("context_length: 16", "context_length: 24"))
    exp.write_text(exp.read_text().replace("search: {", "search: {evaluator: supernet, ").replace(
        "full_distill: {", "full_distill: {init: supernet, lr: 1.0e-12, "))
    return exp


def test_a_supernet_search_scores_students_with_inherited_weights(tmp_path, tiny_shapes_teacher):
    from dime_nas import api
    from dime_nas.search.record import TrialRecord
    from dime_nas.supernet.store import supernet_dir

    _, teacher = tiny_shapes_teacher
    exp = _supernet_experiment(tmp_path, teacher)
    exp.write_text(exp.read_text().replace("supernet: {", "supernet: {finetune_steps: 0, "))
    outcome = api.search(exp, out=tmp_path / "run", progress=False)
    records = [TrialRecord.from_trial(t) for t in outcome.study.trials]
    scored = [r for r in records if r.status == "ok" and not r.is_repeat]
    assert len(scored) == 4 and outcome.train_steps == 0  # no trial trained: every score is inherited
    assert all(r.timings["eval_s"] > 0 and "train_s" not in r.timings and "accuracy" in r.metrics
               and r.teacher_forwards == 0 for r in scored)
    config = api.load(tmp_path / "experiment.yaml")
    folder = supernet_dir(config, SearchSpace.load(config.space))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 6 and set(summary["reached"]) == {"largest", "smallest"}
    # a second search over the same space and recipe reuses the stored supernet
    mtime = (folder / "supernet.pt").stat().st_mtime_ns
    api.search(tmp_path / "experiment.yaml", out=tmp_path / "again", progress=False)
    assert (folder / "supernet.pt").stat().st_mtime_ns == mtime
    assert "weight-sharing supernet" in outcome.run.report_md.read_text()
    # the full run starts from the weights the supernet holds (at a learning rate of ~0 it keeps its score)
    full = api.distill_selected(outcome.run, "best", steps=1, export=False, progress=False)[0]
    assert full["full"]["accuracy"] == pytest.approx(full["proxy"]["accuracy"], abs=1e-6)


def test_a_supernet_search_with_timm_trunks_is_refused_at_load_naming_the_key(tmp_path, tiny_shapes_teacher):
    from dime_nas.config import load_experiment

    _, teacher = tiny_shapes_teacher
    exp = _supernet_experiment(tmp_path, teacher)
    (tmp_path / "space.yaml").write_text(ELASTIC_SPACE.replace("kind: vit", "kind: [vit, timm]").replace(
        "    image_size: [16, 32]\n", "    image_size: [16, 32]\n  timm: {model: [test_resnet], image_size: [32]}\n"))
    with pytest.raises(ConfigError, match=r"experiment.yaml: search.evaluator: .*timm"):
        load_experiment(exp)


def test_full_distillation_can_start_from_the_supernets_weights(small_cache, space, supernet):
    from dime_nas.config import DistillConfig
    from dime_nas.distill.trainer import distill

    student = _students(space)[2]
    inherited = extract(supernet, student)
    settings = DistillConfig(steps=1, batch_size=16, text_batch_size=16, lr=1e-12, warmup_steps=0, grad_clip=None)
    towers, _ = distill(student, small_cache, settings, initial=inherited.state_dict(), final_eval=False)
    scratch, _ = distill(student, small_cache, settings, final_eval=False)
    a, b, c = inherited.state_dict(), towers.state_dict(), scratch.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # one step at lr ~0: the inherited weights
    assert not all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)
