"""A normal (non-editable) install works from outside the checkout: shipped spaces and targets come along."""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory, repo_root):
    """A scratch venv holding the built wheel; torch and the other dependencies come from this venv."""
    root = tmp_path_factory.mktemp("wheel_install")
    source = root / "source"  # setuptools writes build/ into the tree it builds: not into the checkout
    shutil.copytree(repo_root, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "runs", "*.egg-info", "__pycache__", "*.onnx*"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(root / "dist"),
                            str(source)], capture_output=True, text=True, cwd=root)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((root / "dist").glob("dime_nas-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # reuse the installed dependencies (torch is 5 GB) without their editable link to the checkout
    Path(purelib, "deps_from_test_venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    return venv, root


def _run(venv, cwd, *args, env=None):
    return subprocess.run([str(venv / "bin" / "dime-nas"), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def test_wheel_imports_the_installed_package_not_the_checkout(wheel_venv, repo_root):
    venv, root = wheel_venv
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import dime_nas; print(dime_nas.__file__)"],
                         cwd=root, capture_output=True, text=True, check=True).stdout
    assert str(venv) in out and str(repo_root) not in out


def test_shipped_space_samples_from_a_wheel_install(wheel_venv):
    venv, root = wheel_venv
    proc = _run(venv, root, "space", "tiny", "--sample", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    samples = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(samples) == 2 and all(s["arch_key"] for s in samples)


def test_one_trial_search_from_outside_the_checkout(wheel_venv, tiny_teacher_dir, tmp_path):
    venv, _ = wheel_venv
    (tmp_path / "exp.yaml").write_text(f"""
name: wheel
teacher: {{checkpoint: {tiny_teacher_dir}, batch_size: 32}}
data:
  shapes: {{n_images: 48, n_sentences: 48, image_size: 64}}
  pixel_size: 64
eval:
  shapes: {{n_per_class: 2, shifts: [], retrieval_size: 0}}
space: tiny
target: local-cpu
distill: {{steps: 2, batch_size: 16, text_batch_size: 16, warmup_steps: 1}}
search: {{trials: 1, seed: 0, sampler: random}}
out_dir: run
""")
    env = {**os.environ, "DIME_NAS_CACHE": str(tmp_path / "cache")}
    proc = _run(venv, tmp_path, "search", "exp.yaml", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = (tmp_path / "run" / "trials.csv").read_text().splitlines()
    assert len(trials) == 2 and "tiny (" in (tmp_path / "run" / "report.md").read_text()
