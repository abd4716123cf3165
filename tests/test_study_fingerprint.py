"""A continued study is refused when anything its fingerprint holds has changed: the space
file's content, the target, a budget, the objectives and every other fingerprinted setting
(the settings are read from the fingerprint itself, so one added later is covered too)."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from conftest import write_experiment
from dime_nas.config import load_experiment
from dime_nas.errors import ConfigError
from dime_nas.run_dir import RunDir
from dime_nas.search.objective import TrialContext
from dime_nas.search.study import experiment_fingerprint, join_study

# a student text tower in the space: every distill setting (text_tower_step_scale too) counts
SPACE = """
name: fingerprint
embed_dim: 64
image:
  kind: vit
  vit: {layers: [1, 2], width: [32], heads: [2], mlp_ratio: [2.0], patch_size: [16], image_size: [32]}
text:
  kind: [teacher, transformer]
  transformer: {layers: [1], width: [32], heads: [2], context_length: [16]}
"""
SECOND_TARGET = """
other-cpu:
  description: the same machine, two threads
  backend: onnxruntime
  providers: [CPUExecutionProvider]
  intra_op_threads: 2
  batch_size: 1
  towers: [image]
  precision: fp32
  warmup: 1
  runs: 5
"""
# The parts of the fingerprint that must be there, whatever else is added later.
REQUIRED_PARTS = {"teacher", "data", "eval", "space", "target", "objectives", "budgets", "distill", "evaluator",
                  "decisions"}


def _experiment(root, teacher_dir):
    path = write_experiment(root, teacher_dir, budgets=["latency_ms <= 50"])
    (root / "space.yaml").write_text(SPACE)
    (root / "targets.yaml").write_text((root / "targets.yaml").read_text() + SECOND_TARGET)
    return path


def _context(config) -> TrialContext:
    """What ``api.search`` builds for a study (no cache: the fingerprint never reads it)."""
    return TrialContext.for_experiment(config, None, None, progress=False)


def _join(config, ctx, url, tmp_path):
    return join_study(config, ctx, url, run=RunDir.of(config, tmp_path / "run"))


def _refused_key(config, ctx, url, tmp_path) -> str:
    with pytest.raises(ConfigError, match=r": trials of different settings must not mix\. Use another --out or "
                                          r"--storage, or --force to start a new study \(the old one is kept in the "
                                          r"run directory\)$") as info:
        _join(config, ctx, url, tmp_path)
    return info.value.key


@pytest.fixture
def recorded(tmp_path, tiny_teacher_dir):
    """(experiment file, study URL) of a study that recorded its fingerprint."""
    path = _experiment(tmp_path, tiny_teacher_dir)
    config = load_experiment(path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _join(config, _context(config), url, tmp_path)
    return path, url


def test_the_fingerprint_holds_every_part_that_changes_a_trial(recorded, tmp_path):
    path, url = recorded
    config = load_experiment(path)
    assert REQUIRED_PARTS <= set(experiment_fingerprint(config, _context(config)))
    _join(config, _context(config), url, tmp_path)  # unchanged: the study continues


def test_an_edited_space_file_is_refused(recorded, tmp_path):
    path, url = recorded
    (tmp_path / "space.yaml").write_text(SPACE.replace("layers: [1, 2]", "layers: [1, 2, 3]"))
    config = load_experiment(path)
    assert _refused_key(config, _context(config), url, tmp_path) == "space"


@pytest.mark.parametrize("edit, key", [
    (lambda text: text.replace("target: fast-cpu", "target: other-cpu"), "target.description"),
    (lambda text: text.replace("latency_ms <= 50", "latency_ms <= 40"), "budgets"),
    (lambda text: text.replace("  - latency_ms <= 50\n", "  - latency_ms <= 50\n  - params_m <= 9\n"), "budgets"),
    (lambda text: text + "objectives: [{metric: accuracy}, {metric: params_m}]\n", "objectives"),
])
def test_an_edited_target_budget_or_objective_is_refused(recorded, tmp_path, edit, key):
    path, url = recorded
    path.write_text(edit(path.read_text()))
    config = load_experiment(path)
    assert _refused_key(config, _context(config), url, tmp_path) == key


def test_an_edited_target_definition_is_refused(recorded, tmp_path):
    path, url = recorded
    targets = tmp_path / "targets.yaml"
    targets.write_text(targets.read_text().replace("runs: 5", "runs: 9", 1))
    config = load_experiment(path)
    with pytest.raises(ConfigError, match=r"was run with target\.runs = 5, this experiment has 9") as info:
        _join(config, _context(config), url, tmp_path)
    assert info.value.key == "target.runs"


def _leaves(tree: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a plain structure's leaves (what ``first_difference`` compares)."""
    if isinstance(tree, dict) and tree:
        return [leaf for k, v in tree.items() for leaf in _leaves(v, f"{prefix}.{k}" if prefix else k)]
    return [prefix]


def _changed(value: Any) -> Any:
    """Another value of the same kind (the fingerprint only records values; nothing validates them here)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-edited"
    if isinstance(value, (list, tuple)):
        return [*value, "edited"]
    if value is None:
        return {"edited": True}  # an optional section (None) filled in
    raise TypeError(f"no edit for {value!r}")


def _set_leaf(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        tree = tree[p]
    tree[last] = value


def _get_leaf(tree: dict[str, Any], key: str) -> Any:
    for p in key.split("."):
        tree = tree[p]
    return tree


def test_any_fingerprinted_setting_that_differs_is_refused_naming_it(recorded, tmp_path):
    """Each leaf of the fingerprint in turn recorded with another value, as if the study had been
    run with it: continuing it is refused, naming that leaf. The leaves are listed from the
    fingerprint itself, so a part or setting added later is covered without editing this test."""
    path, url = recorded
    config = load_experiment(path)
    study, _ = _join(config, _context(config), url, tmp_path)
    original = copy.deepcopy(study.user_attrs["fingerprint"])
    leaves = _leaves(original)
    assert len(leaves) > 40 and {"space", "distill.losses.t_pvl", "data.shapes.n_images", "target.runs"} <= set(leaves)
    not_refused = []
    for key in leaves:
        edited = copy.deepcopy(original)
        _set_leaf(edited, key, _changed(_get_leaf(original, key)))
        study.set_user_attr("fingerprint", edited)
        try:
            _join(config, _context(config), url, tmp_path)
            not_refused.append(key)
        except ConfigError as err:
            assert err.key == key, f"a study recorded with another {key} was refused naming {err.key}"
    study.set_user_attr("fingerprint", original)
    assert not not_refused, f"a study recorded with other values of these settings continued: {not_refused}"


def test_config_settings_reach_the_fingerprint(recorded, tmp_path):
    """Every setting of the fingerprinted config sections, edited in the config, changes the study's
    fingerprint at that key (the teacher's device, batch size and cache folder are left out)."""
    path, url = recorded
    config = load_experiment(path)
    before = experiment_fingerprint(config, _context(config))
    sections = [k for k in before if dataclasses.is_dataclass(getattr(config, k, None))]
    assert {"teacher", "data", "eval", "distill"} <= set(sections)
    missed = []
    for key in [k for k in _leaves(before) if k.split(".")[0] in sections]:
        config = load_experiment(path)
        holder = config
        *parents, last = key.split(".")
        for p in parents:
            holder = holder[p] if isinstance(holder, dict) else getattr(holder, p)
        if isinstance(holder, dict):
            holder[last] = _changed(holder[last])
        else:
            setattr(holder, last, _changed(getattr(holder, last)))
        after = experiment_fingerprint(config, _context(config))
        if _get_leaf(after, key) == _get_leaf(before, key):
            missed.append(key)
    assert not missed, f"edited in the config, these settings left the fingerprint unchanged: {missed}"


def test_settings_that_leave_trials_unchanged_continue_the_study(recorded, tmp_path):
    path, url = recorded
    config = load_experiment(path)
    # where, in what batches and from which download folder the teacher runs
    config.teacher.batch_size, config.teacher.device, config.teacher.cache_dir = 7, "cuda:3", "/elsewhere"
    config.search.trials, config.full_distill.steps = 99, 123  # how many trials, the final run
    _join(config, _context(config), url, tmp_path)


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_a_recorded_fingerprint_with_a_setting_missing_or_extra_is_refused(recorded, tmp_path, change):
    """A setting the study did not record (and that is not filled in as added later), or one it
    recorded that this version no longer has, stops the study like a changed one."""
    path, url = recorded
    config = load_experiment(path)
    study, _ = _join(config, _context(config), url, tmp_path)
    fingerprint = copy.deepcopy(study.user_attrs["fingerprint"])
    if change == "missing":
        del fingerprint["distill"]["lr"]
    else:
        fingerprint["distill"]["retired_setting"] = 1
    study.set_user_attr("fingerprint", fingerprint)
    key = "distill.lr" if change == "missing" else "distill.retired_setting"
    assert _refused_key(config, _context(config), url, tmp_path) == key


@pytest.mark.parametrize("edit, key", [
    ("search: {near_budget_margin: 0.3}", "decisions.near_budget_margin"),
    ("search: {near_budget_rounds: 2}", "decisions.near_budget_rounds"),
    ("search: {prune: false}", "decisions.prune"),
    ("latency_predictor: {margin: 0.4}", "decisions.latency_predictor"),
])
def test_the_rules_that_decide_a_latency_or_prune_a_trial_are_fingerprinted(recorded, tmp_path, edit, key):
    """A near-budget margin, rounds, the latency predictor or pruning changed after trials ran would
    judge later trials by other rules than earlier ones."""
    path, url = recorded
    path.write_text(_with_top_level(path.read_text(), edit))
    config = load_experiment(path)
    assert _refused_key(config, _context(config), url, tmp_path) == key


def test_a_study_recorded_before_the_decision_rules_were_fingerprinted_continues_at_their_defaults(recorded, tmp_path):
    path, url = recorded
    config = load_experiment(path)
    study, _ = _join(config, _context(config), url, tmp_path)
    fingerprint = copy.deepcopy(study.user_attrs["fingerprint"])
    del fingerprint["decisions"]
    study.set_user_attr("fingerprint", fingerprint)
    _join(config, _context(config), url, tmp_path)
    path.write_text(_with_top_level(path.read_text(), "search: {near_budget_rounds: 2}"))
    config = load_experiment(path)
    assert _refused_key(config, _context(config), url, tmp_path) == "decisions.near_budget_rounds"


def test_the_text_tower_step_scale_counts_only_where_a_student_trains_its_text_tower(tmp_path, tiny_teacher_dir):
    """With the teacher's text tower for every student the scale changes no trial: a study continues
    when only the scale was edited (and records it at 1.0); with a student text tower it is refused."""
    path = _experiment(tmp_path, tiny_teacher_dir)
    (tmp_path / "space.yaml").write_text(SPACE.replace("kind: [teacher, transformer]", "kind: [teacher]"))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    config = load_experiment(path)
    assert experiment_fingerprint(config, _context(config))["distill"]["text_tower_step_scale"] == 1.0
    _join(config, _context(config), url, tmp_path)
    path.write_text(_with_top_level(path.read_text(), "distill: {text_tower_step_scale: 3.0}"))
    config = load_experiment(path)
    assert experiment_fingerprint(config, _context(config))["distill"]["text_tower_step_scale"] == 1.0
    _join(config, _context(config), url, tmp_path)  # continues
    (tmp_path / "space.yaml").write_text(SPACE)
    second = f"sqlite:///{tmp_path / 'second.db'}"
    _join(load_experiment(path), _context(load_experiment(path)), second, tmp_path)
    path.write_text(path.read_text().replace("text_tower_step_scale: 3.0", "text_tower_step_scale: 1.0"))
    config = load_experiment(path)
    assert _refused_key(config, _context(config), second, tmp_path) == "distill.text_tower_step_scale"


def test_the_supernet_recipe_counts_only_in_a_supernet_search(recorded, tmp_path):
    """A short-distill study ignores the supernet section; a supernet study records it whole
    and refuses an edited recipe, and either refuses the other evaluator."""
    path, url = recorded
    path.write_text(_with_top_level(path.read_text(), "supernet: {steps: 7}"))
    config = load_experiment(path)
    assert experiment_fingerprint(config, _context(config))["evaluator"] == {"name": "short_distill"}
    _join(config, _context(config), url, tmp_path)  # continues: no trial reads the supernet
    path.write_text(_with_top_level(path.read_text(), "search: {evaluator: supernet}"))
    config = load_experiment(path)
    evaluator = experiment_fingerprint(config, _context(config))["evaluator"]
    assert evaluator["name"] == "supernet" and evaluator["supernet"]["steps"] == 7
    assert _refused_key(config, _context(config), url, tmp_path) == "evaluator.name"
    supernet_url = f"sqlite:///{tmp_path / 'supernet.db'}"
    _join(config, _context(config), supernet_url, tmp_path)
    path.write_text(path.read_text().replace("steps: 7", "steps: 8"))
    config = load_experiment(path)
    assert _refused_key(config, _context(config), supernet_url, tmp_path) == "evaluator.supernet.steps"


def _with_top_level(text: str, line: str) -> str:
    """The experiment text with one top-level key set (merged into an existing flow mapping of that key)."""
    key, _, value = line.partition(": ")
    for existing in text.splitlines():
        if existing.startswith(f"{key}: {{"):
            return text.replace(existing, existing.rstrip("}").rstrip() + ", " + value.strip("{} ") + "}")
    return text + line + "\n"



def test_a_study_of_other_directions_is_refused_naming_the_objectives(tmp_path, tiny_teacher_dir):
    """A study of the experiment's name made elsewhere (no fingerprint) that optimises in other
    directions cannot take this experiment's trials."""
    import optuna

    path = _experiment(tmp_path, tiny_teacher_dir)
    config = load_experiment(path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name=config.name, storage=url, directions=["minimize", "minimize"])
    with pytest.raises(ConfigError, match=r"has directions \['minimize', 'minimize'\], this experiment asks for "
                                          r"\['maximize', 'minimize'\]: use another --out or --storage") as info:
        _join(config, _context(config), url, tmp_path)
    assert info.value.key == "objectives"
