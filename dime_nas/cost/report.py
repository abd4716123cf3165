"""One call for the whole cost of a model: params and MACs, and optionally latency."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from dime_nas.cost.flops import model_cost
from dime_nas.cost.latency import measure_target
from dime_nas.cost.targets import Target
from dime_nas.cost.towers import Tower


def cost_report(towers: dict[str, Tower], target: Target | None = None,
                workdir: str | Path | None = None) -> dict[str, Any]:
    """Params/MACs of every tower and, with a target, its latency there.

    Returns:
        ``model_cost(towers)`` plus ``"latency": measure_target(...)`` when ``target`` is
        given. ONNX files go to ``workdir`` (a temporary folder, removed after, if None).
    """
    report = model_cost(towers)
    if target is None:
        return report
    if workdir is not None:
        report["latency"] = measure_target(towers, target, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="dime_nas_cost_") as tmp:
            report["latency"] = measure_target(towers, target, tmp)
            for tower in report["latency"]["towers"].values():
                if tower["export"]:  # the files are gone: say so rather than point at nothing
                    tower["export"]["path"] = tower["export"]["int8_path"] = None
    return report
