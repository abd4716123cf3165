"""The user cache root and atomic writes."""
from __future__ import annotations

from pathlib import Path

import pytest

from dime_nas.fs import atomic_path, user_cache_root, write_atomic


def test_cache_root_prefers_dime_nas_cache_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DIME_NAS_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_root() == tmp_path / "mine"
    monkeypatch.delenv("DIME_NAS_CACHE")
    assert user_cache_root() == tmp_path / "xdg" / "dime_nas"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # set but empty counts as unset
    assert user_cache_root() == tmp_path / "home" / ".cache" / "dime_nas"


def test_the_demo_teacher_and_the_pipeline_share_the_cache_root(monkeypatch, tmp_path):
    from conftest import tiny_shapes_teacher_config
    from dime_nas.pipeline import default_cache_dir
    from dime_nas.shapes.teacher import teacher_dir

    monkeypatch.delenv("DIME_NAS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "xdg" / "dime_nas"
    assert teacher_dir(tiny_shapes_teacher_config()).parent == root / "teachers"

    class Experiment:
        cache_dir, name = None, "e"

    assert default_cache_dir(Experiment()) == root / "features" / "e"


def _temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def test_write_atomic_replaces_the_file_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_atomic(path, "one")
    write_atomic(path, b"two")
    assert path.read_text() == "two" and _temporary_files(path.parent) == []


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed while writing")
    assert path.read_text() == "old" and _temporary_files(tmp_path) == []
