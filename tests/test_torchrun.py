"""`dime-nas distill` under torchrun: two CPU processes (gloo) through the CLI train the same
student as one process does, and only rank 0 measures, evaluates and writes results."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SPACE = """
name: one-vit
image:
  kind: vit
  vit: {layers: 1, width: 64, heads: 2, mlp_ratio: 2.0, patch_size: 8, image_size: 32}
text:
  kind: transformer
  transformer: {layers: 1, width: 64, heads: 2, context_length: 16}
"""


def _cli(*args, cwd, env, launcher=()):
    proc = subprocess.run([*launcher, "-m", "dime_nas.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def searched_run(tmp_path_factory, tiny_teacher_dir):
    root = tmp_path_factory.mktemp("torchrun")
    (root / "space.yaml").write_text(SPACE)
    (root / "exp.yaml").write_text(f"""
name: ddp
teacher: {{checkpoint: {tiny_teacher_dir}, batch_size: 32}}
data:
  shapes: {{n_images: 64, n_sentences: 64, image_size: 32}}
  pixel_size: 32
eval:
  shapes: {{n_per_class: 2, shifts: [], retrieval_size: 0}}
space: space.yaml
target: local-cpu
distill: {{steps: 2, batch_size: 16, text_batch_size: 16, warmup_steps: 1}}
full_distill: {{steps: 6, batch_size: 16, text_batch_size: 16, warmup_steps: 2, checkpoint_every: 3}}
search: {{trials: 1, seed: 0, sampler: random}}
out_dir: run
""")
    env = {**os.environ, "DIME_NAS_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    _cli("search", "exp.yaml", "--quiet", cwd=root, env=env, launcher=(sys.executable,))
    return root, env


def _log(run: Path) -> list[dict]:
    (folder,) = (run / "full").iterdir()
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_two_gloo_processes_through_the_cli_train_like_one(searched_run):
    root, env = searched_run
    shutil.copytree(root / "run", root / "one")
    shutil.copytree(root / "run", root / "two")
    _cli("distill", "one", "--select", "trial:0", "--no-export", "--quiet", cwd=root, env=env,
         launcher=(sys.executable,))
    torchrun = Path(sys.executable).with_name("torchrun")
    _cli("distill", "two", "--select", "trial:0", "--no-export", "--quiet", cwd=root, env=env,
         launcher=(str(torchrun), "--standalone", "--nproc_per_node=2"))

    one, two = (json.loads((root / run / "distill_results.json").read_text()) for run in ("one", "two"))
    assert len(two) == 1, "every rank wrote a result: only rank 0 may"
    assert one[0]["processes"] == 1 and two[0]["processes"] == 2
    assert one[0]["steps"] == two[0]["steps"] == 6
    # the global batch is split over the ranks and gradients are all-reduced: the same run
    a, b = _log(root / "one"), _log(root / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert rb["total"] == pytest.approx(ra["total"], rel=1e-4, abs=1e-5), (ra, rb)
    assert two[0]["full"]["accuracy"] == pytest.approx(one[0]["full"]["accuracy"], abs=0.02)
