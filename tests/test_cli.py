"""The command line: errors the user can act on are caught by type and shown in one line."""
from __future__ import annotations

import pytest

from dime_nas import api, cli
from dime_nas.agent.server import AgentConfigError
from dime_nas.cost.remote import AgentError
from dime_nas.data.cache import CacheError, EvalLeakError
from dime_nas.errors import ConfigError, UserError
from dime_nas.search.storage import StorageUnavailable
from dime_nas.teacher import TeacherLoadError


class NewKindOfUserError(UserError):
    """Any new user error is caught by its base alone: nothing to register in the CLI."""


@pytest.mark.parametrize("error, code", [
    (ConfigError("x.yaml: search.trials: must be >= 1"), 2), (TeacherLoadError("no weights at /t"), 2),
    (CacheError("cache at /c is incomplete"), 2), (EvalLeakError("image a.png is in the test set"), 2),
    (AgentError("agent refused: 401"), 2), (AgentConfigError("token file not found"), 2),
    (FileNotFoundError("no such file: x.yaml"), 2), (NewKindOfUserError("something to fix"), 2),
    (StorageUnavailable("lost the study's database"), 3)])
def test_a_user_error_exits_with_its_code_and_one_line(monkeypatch, capsys, error, code):
    def search(*args, **kwargs):
        raise error

    monkeypatch.setattr(api, "search", search)
    assert cli.main(["search", "x.yaml", "--quiet"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dime-nas: error: {error}"]


def test_any_other_error_exits_1_and_points_to_debug(monkeypatch, capsys):
    def search(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(api, "search", search)
    assert cli.main(["search", "x.yaml", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dime-nas: error: a bug", "(run again with --debug for the traceback)"]
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["--debug", "search", "x.yaml", "--quiet"])


def test_the_inspection_commands_go_through_the_api(monkeypatch, capsys, tmp_path):
    """`cost`, `space` and `train-shapes` print what the api returns (one home for each job)."""
    import json

    from dime_nas.student import StudentConfig, TextTowerConfig, VisionTowerConfig

    student = StudentConfig(32, VisionTowerConfig(kind="vit", image_size=32, layers=1, width=32, heads=2,
                                                  mlp_ratio=2.0, patch_size=16), TextTowerConfig(kind="teacher"))
    path = tmp_path / "s.json"
    path.write_text(json.dumps(student.to_dict()))
    cost = api.model_cost(str(path))
    assert cli.main(["cost", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["image"]["params"] == cost["towers"]["image"]["params"] > 0

    space, drawn = api.sample_space("tiny", count=4, seed=3)
    assert [c.arch_key for c in api.sample_space("tiny", count=4, seed=3)[1]] == [c.arch_key for c in drawn]
    assert cli.main(["space", "tiny", "--sample", "4", "--seed", "3", "--json"]) == 0
    assert [json.loads(line)["arch_key"] for line in capsys.readouterr().out.splitlines()] == [c.arch_key for c in drawn]

    import dataclasses

    demo = api.load("experiments/demo.yaml")
    other_teacher = dataclasses.replace(demo, teacher=dataclasses.replace(demo.teacher, shapes=None,
                                                                          checkpoint="/teacher"))
    with pytest.raises(ConfigError, match="ShapesWorld"):
        api.train_demo_teacher(other_teacher)
