"""dime_nas: find small, fast CLIP-style students for a latency budget.

Data flow: search space (YAML) -> StudentConfig -> open_clip student -> cost
(params, MACs, ONNX latency) -> short DIME-FM distillation on cached teacher
features -> Optuna study -> Pareto report -> full distillation -> export.

The public functions are in ``dime_nas.api`` (``from dime_nas import api``;
``api.search``, ``api.report``, ``api.distill_selected``, ``api.export``). They are not
re-exported here: ``dime_nas.search`` is the search subpackage, and the measurement
agent imports this package on devices that need none of the toolkit.
"""
from __future__ import annotations

__version__ = "0.1.0"
