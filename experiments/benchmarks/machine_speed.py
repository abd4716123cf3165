"""This machine's speed, in the unit the README's timings quote: demo-teacher steps/s.

Trains the demo teacher's recipe (dime_nas.config.ShapesTeacherConfig defaults) for a
few steps on a small pool and prints its training steps/s. The README's demo timings
were measured on a machine where the full build trained at 5.06 steps/s; divide to scale
them to this machine.

    python experiments/benchmarks/machine_speed.py [--steps 40]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile

from common import ROOT  # noqa: F401  (puts the checkout on sys.path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    a = p.parse_args()
    from dime_nas.config import ShapesTeacherConfig
    from dime_nas.shapes import teacher

    cfg = dataclasses.replace(ShapesTeacherConfig(), steps=a.steps, pool_size=2048)
    teacher.EVAL_PER_CLASS = 2  # the evaluation is not what this times
    with tempfile.TemporaryDirectory() as out:
        report = teacher.train_shapes_teacher(cfg, f"{out}/ckpt", progress=False)
    print(f"demo-teacher training: {report.steps_per_second:.2f} steps/s ({a.steps} steps, {report.threads} threads)")


if __name__ == "__main__":
    main()
