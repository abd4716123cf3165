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

import os

__version__ = "0.1.0"

# onnxruntime's telemetry off in every process that imports the toolkit. Its 1DS uploader
# starts when onnxruntime is imported (a device id and an event database under
# ~/.cache/Microsoft/DeveloperTools), so ``disable_telemetry_events()`` comes too late: only
# the environment, set before the import, stops it. The name changed between releases.
os.environ.update(ORT_DISABLE_TELEMETRY="1", ORT_TELEMETRY_DISABLED="1")
