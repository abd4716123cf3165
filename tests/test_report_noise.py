"""The report prints the smallest accuracy difference the short-run proxy resolves (hand-checked)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import optuna
import pytest

from dime_nas.config import load_experiment
from dime_nas.errors import ConfigError
from dime_nas.run_dir import RunDir
from dime_nas.search.record import TrialRecord
from dime_nas.search.report import write_report

DEMO = Path(__file__).resolve().parent.parent / "experiments" / "demo.yaml"


def _study(seed_stds):
    s = optuna.create_study(directions=["maximize", "minimize"], study_name="noise")
    s.set_user_attr("objectives", ["accuracy", "latency_ms"])
    for i, std in enumerate(seed_stds):
        metrics = {"accuracy": 0.5 + 0.01 * i, "latency_ms": 0.1 + i,
                   **({"seed_std/accuracy": std} if std is not None else {})}
        record = TrialRecord(arch_key=f"k{i}", describe=f"student {i}", config={}, status="ok", reason="",
                             cost={"latency_ms": 0.1 + i}, metrics=metrics, train_steps=10)
        s.add_trial(optuna.trial.create_trial(values=[metrics["accuracy"], metrics["latency_ms"]],
                                              user_attrs=record.to_attrs()))
    return s


def _run(tmp_path, *, seeds=1, proxy_seed_std=None):
    config = load_experiment(DEMO)
    config = dataclasses.replace(config, distill=dataclasses.replace(config.distill, seeds=seeds),
                                 search=dataclasses.replace(config.search, proxy_seed_std=proxy_seed_std))
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    run.record(config, "sqlite:///x.db")
    return run


def test_a_measured_seed_std_gives_the_resolvable_difference(tmp_path):
    summary = write_report(_study([None, None]), _run(tmp_path, proxy_seed_std=0.016))
    assert summary["proxy_noise"]["resolvable"] == pytest.approx(1.96 * math.sqrt(2) * 0.016)  # 0.0443
    assert "differs by less than **0.044**" in (tmp_path / "run" / "report.md").read_text()


def test_trials_of_several_seeds_measure_it_themselves(tmp_path):
    summary = write_report(_study([0.02, 0.01]), _run(tmp_path, seeds=3, proxy_seed_std=0.5))
    noise = summary["proxy_noise"]
    sigma = math.sqrt((0.02 ** 2 + 0.01 ** 2) / 2)  # RMS of the trials' seed stds; the config's is not used
    assert noise["seed_std"] == pytest.approx(sigma) and noise["source"] == "pooled over 2 trials"
    assert noise["resolvable"] == pytest.approx(1.96 * math.sqrt(2) * sigma / math.sqrt(3))  # a mean of 3 seeds


def test_unknown_noise_says_how_to_measure_it(tmp_path):
    summary = write_report(_study([None]), _run(tmp_path))
    assert summary["proxy_noise"] == {"seeds": 1, "seed_std": None}
    assert "Proxy noise: not known" in (tmp_path / "run" / "report.md").read_text()
    # a folder that is not a recorded run has no config to read: no line, no error
    assert write_report(_study([None]), tmp_path / "bare")["proxy_noise"] is None


def test_the_seed_std_must_be_positive():
    config = load_experiment(DEMO)
    with pytest.raises(ConfigError, match="search.proxy_seed_std: must be a number > 0"):
        dataclasses.replace(config.search, proxy_seed_std=0.0)
