"""The run folder: its layout, who owns it, the config and storage URL it recorded."""
from __future__ import annotations

import pytest

from conftest import write_experiment
from dime_nas.config import load_experiment
from dime_nas.errors import ConfigError
from dime_nas.run_dir import RunDir


@pytest.fixture
def config(tmp_path, tiny_teacher_dir):
    return load_experiment(write_experiment(tmp_path, tiny_teacher_dir))


def test_the_storage_is_the_override_else_the_config_s_else_the_folder_s_sqlite(config, tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.storage_for(config) == f"sqlite:///{(tmp_path / 'run' / 'study.db').resolve()}" == run.default_storage()
    assert run.storage_for(config, "journal:/x.log") == "journal:/x.log"
    config.search.storage = "postgresql://h/db"
    assert run.storage_for(config) == "postgresql://h/db" and run.storage_for(config, "journal:/x") == "journal:/x"


def test_a_recorded_run_gives_back_its_config_and_storage(config, tmp_path):
    run = RunDir.of(config, tmp_path / "run")
    with pytest.raises(ConfigError, match="not a dime-nas run directory"):
        run.load_config()
    run.claim(config)
    run.record(config, "sqlite:///somewhere.db")
    assert run.is_run and run.storage == "sqlite:///somewhere.db"
    assert run.load_config() == config
    assert RunDir.of(config).path.name == "run"  # the config's out_dir


def test_a_folder_of_another_experiment_is_refused_unless_forced(config, tmp_path):
    run = RunDir(tmp_path / "run")
    run.claim(config)
    run.claim(config)  # the same experiment again: fine
    config.name = "other"
    with pytest.raises(ConfigError, match="belongs to experiment 't'") as info:
        run.claim(config)
    assert info.value.key == "out_dir"
    run.claim(config, force=True)
    with pytest.raises(ConfigError):
        config.name = "t"
        run.claim(config)


def test_a_checkpoint_finds_the_run_that_holds_it(config, tmp_path):
    run = RunDir(tmp_path / "run")
    run.claim(config)
    run.record(config, run.default_storage())
    ckpt = run.full_run("abc") / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    assert RunDir.enclosing(ckpt).path == run.path == RunDir.enclosing(run.path).path
    assert run.export_dir("abc") == run.path / "full" / "abc" / "export"
    with pytest.raises(ConfigError, match="not inside a dime-nas run directory"):
        RunDir.enclosing(tmp_path / "elsewhere" / "checkpoint.pt")
