"""Where training runs: the distill settings' device, resolved per process, reachable from the CLI."""
from __future__ import annotations

import json

import optuna
import pytest
import torch

from conftest import write_experiment
from dime_nas.cli import main
from dime_nas.config import DistillConfig, load_experiment
from dime_nas.distill.trainer import resolve_device
from dime_nas.errors import ConfigError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def test_device_defaults_to_the_cpu_without_cuda_and_is_validated():
    if not torch.cuda.is_available():
        assert resolve_device(None) == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="distill.device"):
        DistillConfig(device="gpu0")


@no_cuda
def test_asking_for_cuda_without_it_is_refused_before_anything_runs(tmp_path, tiny_teacher_dir):
    """By the machine preflight of the commands that run an experiment; reading it probes nothing."""
    from dime_nas import api

    exp = write_experiment(tmp_path, tiny_teacher_dir, extra="")
    text = exp.read_text().replace("distill: {steps: 4,", "distill: {device: cuda, steps: 4,")
    exp.write_text(text)
    config = load_experiment(exp)
    with pytest.raises(ConfigError, match="CUDA is not available") as info:
        api.preflight(config)
    assert "distill.device" in str(info.value)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


def _search_and_distill(tmp_path, tiny_teacher_dir, monkeypatch, device):
    exp = write_experiment(tmp_path, tiny_teacher_dir, trials=2)
    exp.write_text(exp.read_text().replace("distill: {steps: 4,", f"distill: {{device: {device}, steps: 4,")
                   .replace("full_distill: {steps: 6,", f"full_distill: {{device: {device}, steps: 6,"))
    monkeypatch.chdir(tmp_path)
    assert main(["search", str(exp), "--quiet"]) == 0
    assert main(["distill", "run", "--select", "best", "--quiet"]) == 0
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    trained = [t for t in study.trials if t.user_attrs.get("train_steps")]
    results = json.loads((tmp_path / "run" / "distill_results.json").read_text())
    return [t.user_attrs["train_device"] for t in trained], results[0]["device"]


def test_search_and_full_run_train_on_the_cpu_through_the_cli(tmp_path, tiny_teacher_dir, monkeypatch):
    trials, full = _search_and_distill(tmp_path, tiny_teacher_dir, monkeypatch, "cpu")
    assert trials and set(trials) == {"cpu"} and full == "cpu"


@needs_cuda
def test_search_and_full_run_train_on_the_gpu_through_the_cli(tmp_path, tiny_teacher_dir, monkeypatch):
    trials, full = _search_and_distill(tmp_path, tiny_teacher_dir, monkeypatch, "cuda")
    assert trials and all(d.startswith("cuda") for d in trials) and full.startswith("cuda")
