"""Pre-registered students (experiments/benchmarks/preregister.py): list files read back exactly,
the stratified draw reproducible from its seed, and the committed fresh list redrawn from its header."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "experiments" / "benchmarks"
sys.path.insert(0, str(BENCH))

import preregister  # noqa: E402
from dime_nas.errors import ConfigError  # noqa: E402
from dime_nas.space import SearchSpace  # noqa: E402

MIXED = BENCH / "shapes-mixed.yaml"


def test_list_lines_round_trip_through_describe_and_json(tmp_path):
    space = SearchSpace.load(MIXED)
    students = preregister.draw(space, {"vit": 6, "timm": 4}, seed=3, embed_dim=64)
    path = tmp_path / "list.txt"
    preregister.write_students(path, students, ["a header"])
    back = preregister.read_students(path, embed_dim=64)
    assert [s.arch_key for s in back] == [s.arch_key for s in students]
    json_line = students[0].to_json()
    assert preregister.parse_student(json_line, embed_dim=64).arch_key == students[0].arch_key


@pytest.mark.parametrize("text, problem", [
    ("vit L2 W64 H2 mlp4 p8 @48px", "line 4: expected '<image tower> + <text tower>'"),
    ("resnet @32px + text=teacher", "line 4: image tower 'resnet @32px'"),
    ("timm test_resnet @32px + text L1 W64", "line 4: text tower 'text L1 W64'"),
    ("vit L2 W64 H3 mlp4 p8 @48px + text=teacher", "line 4: vision.width 64 is not divisible by vision.heads 3"),
    ("timm test_resnet @32px + text=teacher", "line 4 repeats line 2"),
])
def test_bad_list_lines_are_refused_naming_the_line(tmp_path, text, problem):
    path = tmp_path / "list.txt"
    path.write_text(f"# comment\ntimm test_resnet @32px + text=teacher\n\n{text}\n")  # the bad line is line 4
    with pytest.raises(ConfigError, match=re.escape("list.txt: " + problem)):
        preregister.read_students(path, embed_dim=64)


def test_missing_and_empty_lists_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="student list not found"):
        preregister.read_students(tmp_path / "nope.txt", embed_dim=64)
    (tmp_path / "empty.txt").write_text("# only a comment\n")
    with pytest.raises(ConfigError, match="no students"):
        preregister.read_students(tmp_path / "empty.txt", embed_dim=64)


def test_draw_is_reproducible_stratified_and_excludes():
    space = SearchSpace.load(MIXED)
    first = preregister.draw(space, {"vit": 8, "timm": 5}, seed=7)
    again = preregister.draw(space, {"vit": 8, "timm": 5}, seed=7)
    other = preregister.draw(space, {"vit": 8, "timm": 5}, seed=8)
    assert [s.arch_key for s in first] == [s.arch_key for s in again]
    assert [s.arch_key for s in first] != [s.arch_key for s in other]
    assert sum(s.vision.kind == "vit" for s in first) == 8 and sum(s.vision.kind == "timm" for s in first) == 5
    assert len({s.arch_key for s in first}) == 13
    banned = {first[0].describe(), first[3].describe()}
    without = preregister.draw(space, {"vit": 8, "timm": 5}, seed=7, exclude=banned)
    assert banned.isdisjoint(s.describe() for s in without) and len(without) == 13


def test_quotas_parse_and_name_an_unknown_family():
    assert preregister.parse_quotas("4", ("vit", "timm")) == {"vit": 4, "timm": 4}
    assert preregister.parse_quotas("vit=30,timm=15", ("vit", "timm")) == {"vit": 30, "timm": 15}
    with pytest.raises(ValueError, match="unknown image family 'convnet'"):
        preregister.parse_quotas("vit=3,convnet=2", ("vit", "timm"))


def test_the_committed_fresh_list_redraws_from_its_header(tmp_path):
    """The pre-registered list is exactly what its recorded command draws."""
    listed = BENCH / "fresh_students.txt"
    command = next(l for l in listed.read_text().splitlines() if l.startswith("# Redraw: "))
    args = command.removeprefix("# Redraw: python ").split()
    args[args.index("--students") + 1] = str(tmp_path / "redrawn.txt")
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, capture_output=True)
    def body(text):  # all but the redraw command, which names the file written
        return [l for l in text.splitlines() if not l.startswith("# Redraw: ")]

    assert body((tmp_path / "redrawn.txt").read_text()) == body(listed.read_text())


def test_shapes_mixed_holds_shapes_vit_exactly():
    """The fresh ViT students are random draws from shapes-vit: same ViT and text sections, same constraint."""
    mixed = yaml.safe_load(MIXED.read_text())
    vit = yaml.safe_load((ROOT / "dime_nas" / "search_spaces" / "shapes-vit.yaml").read_text())
    assert mixed["image"]["vit"] == vit["image"]["vit"]
    assert mixed["text"] == vit["text"]
    assert mixed["constraints"] == vit["constraints"]
    assert len(mixed["image"]["timm"]["model"]) >= 4


def test_check_committed(tmp_path):
    git = ["git", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    path = tmp_path / "list.txt"
    path.write_text("timm test_resnet @32px + text=teacher\n")
    with pytest.raises(ValueError, match="is not committed"):
        preregister.check_committed(path)
    subprocess.run([*git, "add", "list.txt"], check=True)
    subprocess.run([*git, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "list"], check=True)
    assert len(preregister.check_committed(path)) == 40
    path.write_text("timm test_resnet @48px + text=teacher\n")
    with pytest.raises(ValueError, match="differs from its committed version"):
        preregister.check_committed(path)
