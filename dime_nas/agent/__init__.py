"""The measurement agent: a small HTTP service that runs on the target device.

It stores ONNX models under their content hash and times them with onnxruntime.
Its import path needs only onnxruntime, numpy, onnx (the model checker), Starlette
and uvicorn (the ``agent`` extra), never torch nor the rest of the toolkit, so a board
needs only those (README, "Measuring on your device"). Nothing is imported here.
"""
from __future__ import annotations
