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
