from __future__ import annotations

import itertools

import optuna
import pytest
import yaml

from dime_nas.errors import ConfigError
from dime_nas.space import SearchSpace, resolve_space_path

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = {
    "name": "t", "embed_dim": 32,
    "image": {"kind": "vit", "vit": {"layers": {"low": 1, "high": 3}, "width": [48, 64, 96], "heads": [2, 3, 4],
                                     "mlp_ratio": [2.0], "patch_size": [4, 8, 16], "image_size": [24, 32, 48]}},
    "text": {"kind": "teacher"},
}


def _write(tmp_path, spec) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _brute_force(spec_vit, constraint):
    out = set()
    for layers, width, heads, patch, size in itertools.product(range(1, 4), spec_vit["width"], spec_vit["heads"],
                                                               spec_vit["patch_size"], spec_vit["image_size"]):
        if width % heads == 0 and size % patch == 0 and constraint(layers, width, heads, patch, size):
            out.add((layers, width, heads, patch, size))
    return out


def test_grid_equals_brute_force_with_builtin_and_user_constraints():
    spec = {**BASE, "constraints": ["(image.vit.image_size // image.vit.patch_size) ** 2 <= 36",
                                    "image.vit.layers * image.vit.width <= 192"]}
    space = SearchSpace(spec)
    got = {(c.vision.layers, c.vision.width, c.vision.heads, c.vision.patch_size, c.vision.image_size)
           for c in space.grid()}
    expected = _brute_force(spec["image"]["vit"], lambda l, w, h, p, s: (s // p) ** 2 <= 36 and l * w <= 192)
    assert got == expected and len(got) > 5


@pytest.mark.parametrize("sampler", [optuna.samplers.RandomSampler(seed=0), optuna.samplers.TPESampler(seed=0),
                                     optuna.samplers.NSGAIISampler(seed=0), optuna.samplers.QMCSampler(seed=0)])
def test_every_sampled_config_satisfies_the_constraints(sampler):
    spec = {**BASE, "constraints": ["(image.vit.image_size // image.vit.patch_size) ** 2 <= 36"]}
    space = SearchSpace(spec)
    valid = {c.arch_key for c in space.grid()}
    study = optuna.create_study(sampler=sampler)
    seen = set()

    def objective(trial):
        config = space.suggest(trial)  # StudentConfig itself refuses width % heads != 0
        v = config.vision
        assert (v.image_size // v.patch_size) ** 2 <= 36
        assert config.arch_key in valid
        seen.add(config.arch_key)
        return v.layers * v.width

    study.optimize(objective, n_trials=60)
    assert len(seen) > 10


def test_narrowed_choices_get_their_own_parameter_name():
    space = SearchSpace(BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    names = set()
    for _ in range(40):
        trial = study.ask()
        space.suggest(trial)
        names |= set(trial.params)
        study.tell(trial, 0.0)
    assert "image.vit.width" in names
    assert any(n.startswith("image.vit.heads[") for n in names)  # width 64 admits only heads 2 and 4


def test_grid_params_replay_the_same_configs():
    space = SearchSpace(BASE)
    pairs = space.grid_params()
    for config, params in pairs[::17]:
        assert space.suggest(optuna.trial.FixedTrial(params)) == config


def test_conditional_branches_sample_only_active_dimensions():
    spec = {**BASE, "image": {**BASE["image"], "kind": ["vit", "timm"],
                              "timm": {"model": ["test_efficientnet"], "image_size": [32]}}}
    space = SearchSpace(spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    kinds = set()
    for _ in range(30):
        trial = study.ask()
        config = space.suggest(trial)
        kinds.add(config.vision.kind)
        prefix = "image.timm." if config.vision.kind == "vit" else "image.vit."
        assert not any(name.startswith(prefix) for name in trial.params)
        study.tell(trial, 0.0)
    assert kinds == {"vit", "timm"}


def test_grid_refuses_large_or_continuous_spaces():
    with pytest.raises(ConfigError, match="max_grid"):
        SearchSpace({**BASE, "max_grid": 10}).grid()
    cont = {**BASE, "image": {"kind": "vit", "vit": {**BASE["image"]["vit"], "mlp_ratio": {"low": 1.0, "high": 4.0}}}}
    with pytest.raises(ConfigError, match="continuous"):
        SearchSpace(cont).grid()
    assert SearchSpace(cont).suggest(optuna.trial.FixedTrial(
        {"image.vit.layers": 1, "image.vit.width": 48, "image.vit.heads": 2, "image.vit.mlp_ratio": 2.5,
         "image.vit.patch_size": 4, "image.vit.image_size": 24})).vision.mlp_ratio == 2.5


@pytest.mark.parametrize("mutate, key, problem", [
    (lambda s: s["image"]["vit"].update(widht=[64]), "image.vit.widht", "did you mean 'width'"),
    (lambda s: s.update(contraints=[]), "contraints", "unknown key"),
    (lambda s: s["image"]["vit"].update(width=[]), "image.vit.width", "empty choice list"),
    (lambda s: s["image"]["vit"].update(layers="four"), "image.vit.layers", "expected int"),
    (lambda s: s["image"]["vit"].update(mlp_ratio=["big"]), "image.vit.mlp_ratio", "expected float"),
    (lambda s: s["image"]["vit"].update(layers={"low": 5, "high": 2}), "image.vit.layers", "empty range"),
    (lambda s: s.update(constraints=["image.vit.layers > 10"]), "constraints", "no configuration satisfies"),
    (lambda s: s.update(constraints=["image.vit.depth > 1"]), "constraints[0]", "unknown dimension"),
    (lambda s: s.update(constraints=["__import__('os')"]), "constraints[0]", "unsupported syntax"),
    (lambda s: s["image"].update(kind="cnn"), "image.kind", "unknown kind"),
    (lambda s: s["image"]["vit"].pop("patch_size"), "image.vit", "missing dimension"),
    (lambda s: s["image"]["vit"].update(head_width=[16]), "image.vit", "exactly one of heads or head_width"),
])
def test_bad_space_files_fail_at_load_naming_file_key_and_problem(tmp_path, mutate, key, problem):
    import copy

    spec = copy.deepcopy(BASE)
    mutate(spec)
    path = _write(tmp_path, spec)
    with pytest.raises(ConfigError) as info:
        SearchSpace.load(path)
    message = str(info.value)
    assert message.startswith(path) and key in message and problem in message


def test_impossible_builtin_constraint_is_caught():
    spec = {**BASE, "image": {"kind": "vit", "vit": {**BASE["image"]["vit"], "width": [50], "heads": [3, 4]}}}
    with pytest.raises(ConfigError, match="no configuration satisfies"):
        SearchSpace(spec)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        SearchSpace.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["tiny", "edge", "dime-fm-b32"])
def test_shipped_spaces_load_and_enumerate(name):
    space = SearchSpace.load(resolve_space_path(name))
    grid = space.grid()
    assert len(grid) == len({c.arch_key for c in grid}) > 10


def test_a_folder_named_like_a_shipped_space_does_not_shadow_it(tmp_path, monkeypatch):
    from dime_nas.space import resolve_space_path, shipped_spaces_dir

    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_space_path("tiny") == shipped_spaces_dir() / "tiny.yaml"


TWO_FAMILIES = {**BASE, "image": {"kind": ["vit", "timm"], "vit": BASE["image"]["vit"],
                                  "timm": {"model": ["test_resnet"], "image_size": [32]}}}


def test_branches_are_the_kind_pairs_some_student_has():
    assert SearchSpace(BASE).branches() == [("vit", "teacher")]
    assert SearchSpace(TWO_FAMILIES).branches() == [("vit", "teacher"), ("timm", "teacher")]
    # a branch no student satisfies is not one
    unsatisfiable = {**TWO_FAMILIES, "constraints": ["image.timm.image_size > 64"]}
    assert SearchSpace(unsatisfiable).branches() == [("vit", "teacher")]


@pytest.mark.parametrize("sampler", ["gp", "nsga2"])
def test_samplers_of_shared_dimensions_warn_on_a_space_of_several_branches(tmp_path, caplog, sampler):
    """GP and NSGA-II drew a two-family space's ViT dimensions at random (search_efficiency_500): say so at load."""
    from dime_nas.search.samplers import check_space

    with caplog.at_level("WARNING", logger="dime_nas.search.samplers"):
        check_space(sampler, _write(tmp_path, TWO_FAMILIES))
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert f"{sampler!r}" in message and "2 branches" in message and "timm + text teacher" in message \
        and "'tpe'" in message, message
    caplog.clear()
    with caplog.at_level("WARNING", logger="dime_nas.search.samplers"):
        check_space(sampler, _write(tmp_path, BASE))  # one branch: every dimension is shared
        check_space("tpe", _write(tmp_path, TWO_FAMILIES))
        check_space("random", _write(tmp_path, TWO_FAMILIES))
    assert caplog.records == []
