from __future__ import annotations

import pytest
import yaml

from conftest import write_experiment
from dime_nas.cli import main
from dime_nas.config import load_experiment
from dime_nas.metrics import Budget
from dime_nas.errors import ConfigError


def _mutated(tmp_path, teacher_dir, mutate):
    path = write_experiment(tmp_path, teacher_dir)
    data = yaml.safe_load(path.read_text())
    mutate(data)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mutate, key, problem", [
    (lambda d: d.update(serch={}), "serch", "did you mean 'search'"),
    (lambda d: d["distill"].update(stpes=3), "distill.stpes", "did you mean 'steps'"),
    (lambda d: d["distill"].update(steps="many"), "distill.steps", "expected an integer"),
    (lambda d: d["distill"].update(lr="fast"), "distill.lr", "expected a number"),
    (lambda d: d["distill"].update(seeds=0), "distill.seeds", "must be >= 1"),
    (lambda d: d["full_distill"].update(seeds=3), "full_distill.seeds", "seeds is for the short runs"),
    (lambda d: d["distill"].update(text_tower_step_scale=0), "distill.text_tower_step_scale", "must be a number > 0"),
    (lambda d: d["distill"].update(text_tower_step_scale=float("inf")), "distill.text_tower_step_scale",
     "must be a number > 0"),
    (lambda d: d["full_distill"].update(text_tower_step_scale=1), "full_distill.text_tower_step_scale",
     "the scale is for the short runs"),
    (lambda d: d["search"].update(sampler="tpee"), "search.sampler", "unknown sampler"),
    (lambda d: d["search"].update(evaluator="supernett"), "search.evaluator", "did you mean 'supernet'"),
    (lambda d: d.update(target="pi5"), "target", "unknown target"),
    (lambda d: d.update(budgets=["latency_ms < 3"]), "budgets[0]", "cannot read budget"),
    (lambda d: d.update(budgets=["speed <= 3"]), "budgets[0]", "unknown metric"),
    (lambda d: d.update(eval={"shapes": {"n_per_class": 2, "shifts": [], "retrieval_size": 0}},
                        budgets=["retrieval >= 0.5"]), "budgets[0]", "does not measure"),
    (lambda d: d.update(objectives=[{"metric": "shifted_accuracy"}], eval={}), "objectives[0]", "not measured"),
    (lambda d: d.update(data={"images": "/no/such/folder", "sentences": "/no/such.txt"}), "data.images",
     "path not found"),
    (lambda d: d["teacher"].update(checkpoint="/no/such/teacher"), "teacher.checkpoint", "path not found"),
    (lambda d: d.update(teacher={"model": "ViT-B-32"}), "teacher", "exactly one of"),
    (lambda d: d.update(space="nope.yaml"), "space", "search space not found"),
    (lambda d: d.pop("data"), "data", "missing required key"),
])
def test_bad_experiment_fails_before_anything_runs_naming_the_key(tmp_path, tiny_teacher_dir, mutate, key, problem):
    path = _mutated(tmp_path, tiny_teacher_dir, mutate)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert str(path) in message and key in message and problem in message, message


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path, tiny_teacher_dir, capsys):
    path = _mutated(tmp_path, tiny_teacher_dir, lambda d: d.update(target="pi5"))
    assert main(["search", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown target 'pi5'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unreachable_storage_is_reported(tmp_path, tiny_teacher_dir, capsys):
    path = write_experiment(tmp_path, tiny_teacher_dir)
    code = main(["search", str(path), "--quiet", "--storage", "postgresql://nobody@127.0.0.1:1/none"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot open storage" in err and "postgresql://nobody@127.0.0.1:1/none" in err


def test_shipped_experiments_load(repo_root):
    demo = load_experiment(repo_root / "experiments" / "demo.yaml")
    assert demo.teacher.shapes is not None and demo.space.endswith("demo.yaml")
    assert [str(b) for b in demo.budget_list] == ["latency_ms <= 0.25"]


def test_budget_violation_sign():
    assert Budget.parse("latency_ms <= 8").violation(9.5) == pytest.approx(1.5)
    assert Budget.parse("latency_ms <= 8").violation(7) < 0
    assert Budget.parse("accuracy >= 0.5").violation(0.4) == pytest.approx(0.1)


def test_storage_is_checked_before_the_cache_is_built(tmp_path, tiny_teacher_dir, monkeypatch):
    import dime_nas.pipeline as pipeline

    def fail(*a, **k):
        raise AssertionError("the cache was built before the storage was checked")

    monkeypatch.setattr(pipeline, "prepare_cache", fail)
    path = write_experiment(tmp_path, tiny_teacher_dir)
    assert main(["search", str(path), "--quiet", "--storage", "mysql://nobody@127.0.0.1:1/none"]) == 2


def test_paper_template_is_complete_but_for_its_data_paths_and_a_gpu():
    # its data paths are the user's (its GPU target is refused by the preflight of a run, not here)
    with pytest.raises(ConfigError, match="path not found: /data/"):
        load_experiment("experiments/dime-fm-vitl14-b32.yaml")
    from dime_nas.config import ExperimentConfig
    from dime_nas.typed_yaml import from_mapping, load_yaml_mapping

    config = from_mapping(ExperimentConfig, load_yaml_mapping("experiments/dime-fm-vitl14-b32.yaml"))
    assert config.teacher.model == "ViT-L-14" and config.teacher.pretrained == "openai"
    assert config.target == "gpu-cuda" and config.space == "dime-fm-b32"


def test_accuracy_needs_an_in_distribution_task(tmp_path, tiny_teacher_dir):
    from conftest import make_corpora

    _, _, root = make_corpora(tmp_path)
    shifted_only = {"tasks": [{"name": "colour", "folder": str(root / "task"), "shifted": True}]}
    path = _mutated(tmp_path, tiny_teacher_dir, lambda d: d.update(eval=shifted_only))
    with pytest.raises(ConfigError, match="objective 'accuracy' is not measured") as info:
        load_experiment(path)
    assert "objectives[0]" in str(info.value)
    ok = _mutated(tmp_path, tiny_teacher_dir, lambda d: d.update(eval=shifted_only,
                                                                 objectives=[{"metric": "shifted_accuracy"}]))
    assert load_experiment(ok).objectives[0].metric == "shifted_accuracy"


def test_a_student_with_its_own_text_tower_gets_a_longer_short_run_of_the_same_shape():
    from dime_nas.config import DistillConfig
    from dime_nas.student import StudentConfig, TextTowerConfig, VisionTowerConfig

    vision = VisionTowerConfig(kind="vit", layers=1, width=32, heads=2, mlp_ratio=2.0, patch_size=16, image_size=32)
    own_text = StudentConfig(vision=vision, text=TextTowerConfig(kind="transformer", layers=1, width=32, heads=2,
                                                                 context_length=16), embed_dim=32)
    teacher_text = StudentConfig(vision=vision, text=TextTowerConfig(kind="teacher"), embed_dim=32)
    short = DistillConfig(steps=240, warmup_steps=24, eval_every=60, seconds=10.0, lr=1e-3)
    assert short.for_student(teacher_text) == short and short.step_scale(teacher_text) == 1.0
    longer = short.for_student(own_text)
    assert (longer.steps, longer.warmup_steps, longer.eval_every, longer.seconds) == (480, 48, 120, 20.0)
    assert longer.lr == short.lr and short.steps == 240  # the rest unchanged; the experiment's settings untouched
    assert DistillConfig(steps=5, warmup_steps=1, text_tower_step_scale=1.5).for_student(own_text).steps == 8
    unscaled = DistillConfig(text_tower_step_scale=1.0)
    assert unscaled.for_student(own_text) is unscaled
