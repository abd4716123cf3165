"""What each install brings: the device-side `agent` extra is torch-free, and a command that
needs the search tools says which extra to install when they are missing."""
from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

from dime_nas.cli import SEARCH_EXTRA_MODULES

HEAVY = {"torch", "torchvision", "open_clip_torch", "timm", "optuna", "fvcore", "onnxscript", "scikit-learn"}


def _requirements(repo_root: Path) -> dict[str, set[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(repo_root / "setup.cfg")
    names = lambda block: {re.split(r"[<>=!\[; ]", line.strip())[0].lower()  # noqa: E731
                           for line in block.splitlines() if line.strip() and not line.strip().startswith("#")}
    out = {"core": names(cfg["options"]["install_requires"])}
    out.update({extra: names(block) for extra, block in cfg["options.extras_require"].items()})
    return out


def test_agent_install_pulls_no_torch(repo_root):
    req = _requirements(repo_root)
    assert not (req["core"] | req["agent"]) & HEAVY
    assert {"onnxruntime", "numpy"} <= req["core"] and {"starlette", "uvicorn"} <= req["agent"]


def test_search_extra_holds_the_pinned_torch_and_every_search_library(repo_root):
    cfg = configparser.ConfigParser()
    cfg.read(repo_root / "setup.cfg")
    search = cfg["options.extras_require"]["search"]
    assert "torch==2.14.1" in search and "torchvision==0.29.1" in search
    assert HEAVY <= _requirements(repo_root)["search"]


def _dry_run(repo_root: Path, target: str, venv: Path) -> list[list[str]]:
    """The commands ``make TARGET`` would run where ``venv`` does not exist yet, split into words."""
    proc = subprocess.run(["make", "-n", "--no-print-directory", f"VENV={venv}", target], cwd=repo_root,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.replace("\\\n", " ").splitlines()  # a recipe line continued with a backslash is one
    return [shlex.split(line) for line in lines if line.strip()]


def test_the_make_targets_install_the_search_extra(repo_root, tmp_path):
    """Each target a user runs first installs the package with the search extra into its venv,
    before it runs anything from there."""
    venv = tmp_path / "fresh-venv"
    for target in ("demo", "test", "test-slow"):
        commands = _dry_run(repo_root, target, venv)
        installs = [i for i, c in enumerate(commands) if c[:2] == [f"{venv}/bin/pip", "install"]]
        assert installs, f"make {target} installs nothing: {commands}"
        spec = next(a for a in commands[installs[0]] if a.startswith(".["))
        assert {"search", "test"} <= set(spec[2:-1].split(",")), spec
        uses = [i for i, c in enumerate(commands) if c[0].startswith(f"{venv}/bin/") and i not in installs]
        assert uses and installs[0] < min(uses), f"make {target} runs the venv before installing it: {commands}"


def test_search_command_without_the_search_extra_names_the_extra(tmp_path):
    # a device install: importing torch fails as it would where it is not installed
    (tmp_path / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    (tmp_path / "exp.yaml").write_text("name: x\n")
    proc = subprocess.run([sys.executable, "-c", "import sys; from dime_nas.cli import main; "
                           "sys.exit(main(['search', sys.argv[1]]))", str(tmp_path / "exp.yaml")],
                          cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'dime-nas[search]'" in proc.stderr and "'torch'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_module_the_message_names_is_installed_here_by_the_search_extra():
    import importlib.util
    assert all(importlib.util.find_spec(m) is not None for m in SEARCH_EXTRA_MODULES)
