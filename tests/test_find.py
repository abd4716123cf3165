"""`dime-nas find`: budget -> search -> select -> full distillation -> export -> verify, moving
along the front when what ships misses the budget on the target, resumable at every stage."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import write_experiment
from dime_nas import api
from dime_nas.cli import main
from dime_nas.cost import latency
from dime_nas.cost.backend import LatencyBackend, LatencyMeasurement
from dime_nas.errors import ConfigError

# few latency rounds and int8 variants keep each verification short
SETTINGS = "deliverable: {latency_rounds: 2, calibration_samples: 16, quantization: [dynamic, static]}"


def tiny_experiment(root: Path, teacher_dir: Path, trials: int = 3, space: str = "space.yaml") -> Path:
    """conftest's experiment (its 8-student test space unless ``space`` names another)."""
    path = write_experiment(root, teacher_dir, trials=trials, extra=SETTINGS)
    path.write_text(path.read_text().replace("space: space.yaml", f"space: {space}"))
    return path


def test_find_end_to_end_and_a_rerun_after_a_kill_does_not_distil_again(tmp_path, tiny_teacher_dir, monkeypatch,
                                                                         capsys):
    exp = tiny_experiment(tmp_path, tiny_teacher_dir, trials=2, space="tiny")  # the shipped tiny space
    monkeypatch.chdir(tmp_path)
    real_export = api.export

    def killed(*args, **kwargs):  # the process dies after the full run, before its export is made
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "export", killed)
    assert main(["find", str(exp), "--budget", "latency_ms <= 1000", "--quiet"]) == 130
    run = Path("run-find-latency_ms-le-1000")
    assert json.loads((run / "distill_results.json").read_text())[0]["steps"] == 6  # distilled before the kill

    monkeypatch.setattr(api, "export", real_export)
    steps_taken, real_step = [], torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps_taken.append(1) or real_step(self, *a, **k))
    capsys.readouterr()
    assert main(["find", str(exp), "--budget", "latency_ms <= 1000"]) == 0
    printed = capsys.readouterr().out
    assert steps_taken == []  # neither the search nor the full run trained again
    assert "done before (6 steps), not run again" in printed
    for stage in ("[1/4 search]", "[select]", "[3/4 export]", "[4/4 verify]", "found: trial"):
        assert stage in printed, stage
    record = json.loads((run / "find.json").read_text())
    chosen = record["chosen"]
    assert len(record["attempts"]) == 1 and chosen["passes"] and chosen["trial"] == record["attempts"][0]["trial"]
    export = Path(chosen["export"])
    verification = json.loads((export / "verification.json").read_text())
    assert verification["budgets"][0]["budget"] == "latency_ms <= 1000" and verification["passes"]
    assert chosen["shipped"] == verification["shipped"] and chosen["latency_ms"] > 0
    assert "## Verified on fast-cpu" in (export / "README.md").read_text()
    card = json.loads((export / "model_card.json").read_text())
    assert card["steps"] == 6 and card["test"]["accuracy"] == chosen["test"]  # the full run's held-out score
    # the first candidate is the most accurate feasible student
    best = next(p for p in api.report(run)["selected"] if "best" in p["reasons"])
    assert chosen["trial"] == best["trial"]

    # a third run reuses everything: no training, no export, no verification
    from dime_nas import verify

    monkeypatch.setattr(api, "export", killed)
    monkeypatch.setattr(verify, "verify_export", killed)
    again = api.find(exp, ["latency_ms <= 1000"], progress=False)
    assert again.chosen["export"] == chosen["export"] and steps_taken == []


class ScriptedBackend(LatencyBackend):
    """Every file times at 1 ms, but the first exported deliverable verified times at 50 ms."""

    name = "onnxruntime"
    slow: list[Path] = []

    def measure(self, exported, target) -> LatencyMeasurement:
        path = Path(exported.path_for(target))
        if path.parent.name == "export" and not ScriptedBackend.slow:
            ScriptedBackend.slow.append(path.parent)
        ms = 50.0 if path.parent in ScriptedBackend.slow else 1.0
        return LatencyMeasurement(tower=exported.tower, target=target.name, backend="scripted", median_ms=ms,
                                  p10_ms=ms, p90_ms=ms, p99_ms=ms, mean_ms=ms, std_ms=0.0, cv=0.0, runs=target.runs,
                                  warmup=target.warmup, batch=target.batch_size, threads=target.intra_op_threads,
                                  providers=["scripted"], precision=target.precision, machine={"cpu_count": 1},
                                  sessions=2, session_medians_ms=[ms, ms])


def test_find_moves_to_the_next_student_when_the_first_misses_on_the_target(tmp_path, tiny_teacher_dir,
                                                                           monkeypatch):
    exp = tiny_experiment(tmp_path, tiny_teacher_dir)
    monkeypatch.setitem(latency.LATENCY_BACKENDS, "onnxruntime", ScriptedBackend)
    monkeypatch.setattr(ScriptedBackend, "slow", [])
    lines: list[str] = []
    from dime_nas.find import find

    outcome = find(exp, ["latency_ms <= 10"], out=tmp_path / "run", progress=False, say=lines.append)
    first, second = outcome.attempts
    assert not first["passes"] and first["latency_ms"] == 50.0 and second["passes"]
    assert outcome.chosen["trial"] == second["trial"] != first["trial"]
    assert Path(first["export"]) == ScriptedBackend.slow[0]
    said = next(line for line in lines if line.startswith(f"trial {first['trial']} misses"))
    assert "latency_ms <= 10: 50 ms misses by 40 ms" in said
    assert f"moving to the next student along the front, trial {second['trial']}" in said
    assert outcome.message.startswith(f"trial {second['trial']}") and "within latency_ms <= 10 by 9 ms" in outcome.message


def test_find_refuses_bad_input(tmp_path, tiny_teacher_dir):
    exp = tiny_experiment(tmp_path, tiny_teacher_dir)
    with pytest.raises(ConfigError, match="budget"):
        api.find(exp, ["latency <= 3"])
    with pytest.raises(ConfigError, match="unknown target"):
        api.find(exp, ["latency_ms <= 3"], target="no-such-board")
    with pytest.raises(ConfigError, match="--precision"):
        api.find(exp, ["latency_ms <= 3"], precision="int4")
    with pytest.raises(ConfigError, match="find needs a budget"):
        api.find(exp, [])
