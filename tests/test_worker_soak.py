"""The soak benchmark's bookkeeping: the cause it reads from a worker's log, and its verdict on a run."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"))
import worker_soak  # noqa: E402

CRASH_LOG = """search: 100%|##########| 8/8
WARNING optuna.study._optimize: Trial 7 failed with value None.
Traceback (most recent call last):
  File "/x/dime_nas/cli.py", line 30, in main
    return int(args.func(args) or 0)
  File "/x/optuna/study/_tell.py", line 113, in _tell_with_warning
    raise ValueError(f"Cannot tell a {frozen_trial.state.name} trial.")
ValueError: Cannot tell a FAIL trial.
"""


def test_the_cause_is_the_last_traceback_s_exception_line(tmp_path):
    log = tmp_path / "w.log"
    log.write_text("Traceback (most recent call last):\n  File \"a\", line 1\nKeyError: 'old'\n" + CRASH_LOG)
    assert worker_soak.cause_of(log) == "ValueError: Cannot tell a FAIL trial."
    log.write_text("loading\ndime-nas: error: lost the study's database while counting\n")
    assert worker_soak.cause_of(log) == "dime-nas: error: lost the study's database while counting"
    assert worker_soak.cause_of(tmp_path / "missing.log") == "(empty log)"


def test_a_run_is_clean_only_when_every_survivor_exits_0_and_the_study_is_whole():
    whole = {"distinct": worker_soak.WORKER_TRIALS, "trained_twice": [], "left_running": 0}
    assert worker_soak.is_clean(0, {"worker-1": 0, "worker-2": 0}, whole)
    assert not worker_soak.is_clean(0, {"worker-1": 0, "worker-2": 1}, whole)
    assert not worker_soak.is_clean(0, {"worker-1": "timeout"}, whole)
    assert not worker_soak.is_clean(1, {"worker-1": 0}, whole)
    assert not worker_soak.is_clean(0, {"worker-1": 0}, {**whole, "distinct": worker_soak.WORKER_TRIALS - 1})
    assert not worker_soak.is_clean(0, {"worker-1": 0}, {**whole, "trained_twice": ["vit-l1"]})
    assert not worker_soak.is_clean(0, {"worker-1": 0}, {**whole, "left_running": 1})


def test_the_summary_counts_exits_and_causes_per_variant():
    run = {"search_exit": 0, "kills": [{"worker": "worker-4", "killed": True, "holding_claim_lock": False}],
           "trials": {"COMPLETE": 9, "FAIL": 1}, "distinct": 8, "trained_twice": [], "left_running": 0, "retried": 1,
           "wall_s": 100.0}
    runs = [{**run, "variant": "one_kill", "run": 0, "exit_codes": {"worker-1": 0, "worker-2": 0}, "causes": [],
             "clean": True},
            {**run, "variant": "one_kill", "run": 1, "exit_codes": {"worker-1": 0, "worker-2": 1}, "clean": False,
             "causes": [{"worker": "worker-2", "exit_code": 1, "cause": "ValueError: Cannot tell a FAIL trial.",
                         "log": "runs/w2.log"}]}]
    data, md = worker_soak.summarise(runs, "test machine")
    assert data["summary"]["one_kill"]["clean"] == 1 and data["summary"]["one_kill"]["exits_by_code"] == {"0": 5, "1": 1}
    assert "**1 of 2**" in md and "`ValueError: Cannot tell a FAIL trial.` | 1 | runs/w2.log" in md
    assert data["runs"] == runs  # every run is kept, so the table can be recomputed


def test_runs_of_two_instances_are_read_back_each_with_the_folder_of_its_logs(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, runs in ((first, [0, 1]), (second, [17])):
        folder.mkdir()
        (folder / "runs.jsonl").write_text("".join(f'{{"variant": "one_kill", "run": {i}}}\n' for i in runs) + "\n")
    merged = worker_soak._finished_runs(first) + worker_soak._finished_runs(second)
    assert [(r["run"], Path(r["scratch"]).name) for r in merged] == [(0, "a"), (1, "a"), (17, "b")]
    assert worker_soak._finished_runs(tmp_path / "never-run") == []
