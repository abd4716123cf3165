"""dime_nas: find small, fast CLIP-style students for a latency budget.

Data flow: search space (YAML) -> StudentConfig -> open_clip student -> cost
(params, MACs, ONNX latency) -> short DIME-FM distillation on cached teacher
features -> Optuna study -> Pareto report -> full distillation -> export.

The public functions (``search``, ``report``, ``distill_selected``, ``export``) live in
``dime_nas.api``; importing them here loads no heavy library.
"""
from __future__ import annotations

from .api import Exported, SearchOutcome, build_cache, distill_selected, export, report, search
from .run_dir import RunDir

__version__ = "0.1.0"
__all__ = ["Exported", "RunDir", "SearchOutcome", "build_cache", "distill_selected", "export", "report", "search"]
