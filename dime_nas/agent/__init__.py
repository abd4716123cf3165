"""The measurement agent: a small HTTP service that runs on the target device.

It stores ONNX models under their content hash and times them with onnxruntime.
Its import path needs only onnxruntime, numpy, onnx (the model checker), Starlette
and uvicorn, never torch nor the rest of the toolkit, so that
``pip install 'dime-nas[agent]'`` is enough on a board. Nothing is imported here.
"""
from __future__ import annotations

API_VERSION = "v1"
