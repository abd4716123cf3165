"""In CI (CI=true) the PostgreSQL tests cannot be skipped away: a missing driver or server fails
the run with a message, and `make postgres-server` fails when it cannot install the server.
Outside CI the tests skip, saying why, and the make target only warns."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _env(ci: bool, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    return {**env, **({"CI": "true"} if ci else {}), **extra}


def _make_postgres_server(repo_root: Path, cwd: Path, ci: bool) -> subprocess.CompletedProcess:
    # no server where it looks, and an installer that fails: what a machine without apt access sees
    return subprocess.run(["make", "--no-print-directory", "-f", str(repo_root / "Makefile"), "postgres-server",
                           f"PG_INITDB={cwd}/no-such/initdb", "APT_GET=false"], cwd=cwd, env=_env(ci),
                          capture_output=True, text=True, timeout=60)


def test_make_postgres_server_fails_in_ci_when_the_install_fails(repo_root, tmp_path):
    proc = _make_postgres_server(repo_root, tmp_path, ci=True)
    assert proc.returncode != 0 and "PostgreSQL could not be installed" in proc.stderr
    assert "CI must run its tests" in proc.stderr
    local = _make_postgres_server(repo_root, tmp_path, ci=False)
    assert local.returncode == 0 and "its tests will be skipped" in local.stdout


def _postgres_test_without_driver(repo_root: Path, tmp_path: Path, ci: bool) -> subprocess.CompletedProcess:
    """One PostgreSQL test, run where importing psycopg fails."""
    fake = tmp_path / "no_driver"
    fake.mkdir(exist_ok=True)
    (fake / "psycopg.py").write_text("raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n")
    path = os.pathsep.join([str(fake), str(repo_root), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs",
                           "tests/test_claim_lock.py::test_a_second_process_waits_for_the_claim_lock_until_the_first_"
                           "releases_it[postgresql]"], cwd=repo_root,
                          env=_env(ci, PYTHONPATH=path), capture_output=True, text=True, timeout=300)


def test_a_missing_postgres_driver_skips_with_its_reason_outside_ci_and_fails_in_ci(repo_root, tmp_path):
    local = _postgres_test_without_driver(repo_root, tmp_path, ci=False)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout[-2000:]
    assert "the postgres extra (psycopg) is not installed" in local.stdout
    ci = _postgres_test_without_driver(repo_root, tmp_path, ci=True)
    assert ci.returncode == 1 and "1 error" in ci.stdout, ci.stdout[-2000:]
    assert "psycopg" in ci.stdout and "CI=true: this test must run in CI" in ci.stdout
