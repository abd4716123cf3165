"""dime_nas: find small, fast CLIP-style students for a latency budget.

Data flow: search space (YAML) -> StudentConfig -> open_clip student -> cost
(params, MACs, ONNX latency) -> short DIME-FM distillation on cached teacher
features -> Optuna study -> Pareto report -> full distillation -> export.
"""
from __future__ import annotations

__version__ = "0.1.0"
