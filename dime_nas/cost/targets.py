"""Targets: named descriptions of the hardware and runtime a latency is measured on.

Shipped targets live in ``targets.yaml`` next to this file; a project can pass its own
YAML (a mapping of target name -> fields). Every field is validated and an unknown
key is an error that names the key, the target and the file. The settings only one
backend reads (a remote target's agents and token) are that backend's ``options``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean
from ..typed_yaml import load_yaml_mapping, to_plain

SHIPPED_TARGETS = Path(__file__).with_name("targets.yaml")
MOVED_TO_OPTIONS = ("url", "urls", "token_env", "token_file")  # top-level keys of remote targets before `options`
PRECISIONS = ("fp32", "int8")
TOWERS = ("image", "text")


@dataclass(frozen=True)
class Target:
    """Where and how a latency is measured."""

    name: str  # key in the targets file, e.g. "local-cpu"
    description: str  # the hardware and runtime in words
    backend: str = "onnxruntime"  # a name in cost/latency.py's LATENCY_BACKENDS: onnxruntime, torch (eager), remote
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # onnxruntime EPs, in preference order
    intra_op_threads: int = 2  # threads inside one op (onnxruntime intra-op / torch.set_num_threads)
    batch_size: int = 1  # inputs per call
    towers: tuple[str, ...] = ("image",)  # towers whose latencies are summed (the deployed ones)
    precision: str = "fp32"  # "fp32" or "int8" (dynamic-quantised ONNX)
    warmup: int = 10  # untimed runs first (allocations, caches, thread pools)
    runs: int = 50  # timed runs (median and percentiles over these)
    sessions: int = 1  # runs split over this many fresh sessions; the median of their medians is kept
    # the backend's own settings (YAML: a mapping, read by the backend's parse_options), e.g. a remote
    # target's agents and token; None for a backend that takes none
    options: Any = None

    def __post_init__(self) -> None:
        from .latency import backend_class

        where = f"target {self.name!r}"
        try:
            backend = backend_class(self.backend)
            if self.options is None or isinstance(self.options, Mapping):
                object.__setattr__(self, "options", backend.parse_options(self.options))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err.problem}") from None
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{where}: precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.towers or any(t not in TOWERS for t in self.towers) or len(set(self.towers)) != len(self.towers):
            raise ConfigError(f"{where}: towers must be distinct names from {TOWERS}, got {list(self.towers)}")
        if not self.providers or not all(isinstance(p, str) and p for p in self.providers):
            raise ConfigError(f"{where}: providers must be a non-empty list of names")
        for name in ("intra_op_threads", "batch_size", "runs", "sessions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 0:
            raise ConfigError(f"{where}: warmup must be a non-negative integer, got {self.warmup!r}")
        if self.sessions > self.runs:
            raise ConfigError(f"{where}: sessions ({self.sessions}) must not exceed runs ({self.runs})")
        problem = backend.check_target(self)
        if problem:
            raise ConfigError(f"{where}: {problem}")

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any], source: str = "<dict>") -> Target:
        """Build a target from its YAML fields; a ConfigError names the source, the target and the key."""
        if not isinstance(data, dict):
            raise ConfigError(f"target {name!r} must be a mapping of fields", file=source)
        known = {f.name for f in dataclasses.fields(cls)} - {"name"}
        unknown = sorted(set(data) - known)
        if unknown:
            moved = [k for k in unknown if k in MOVED_TO_OPTIONS]
            hint = (f"; {', '.join(moved)} belong(s) under `options:` (e.g. options: {{url: http://HOST:PORT, "
                    "token_env: NAME}})" if moved else "")
            raise ConfigError(f"target {name!r} has unknown key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))}){hint}", file=source)
        if "description" not in data:
            raise ConfigError(f"target {name!r} needs a description", file=source)
        if data.get("options") is not None and not isinstance(data["options"], Mapping):
            raise ConfigError(f"target {name!r}: options must be a mapping of option -> value", file=source)
        kwargs = dict(data)
        for key in ("providers", "towers"):
            if key in kwargs:
                value = kwargs[key]
                kwargs[key] = (value,) if isinstance(value, str) else tuple(value)
        try:
            return cls(name=name, **kwargs)
        except ConfigError as err:
            raise ConfigError(err.problem, file=source) from None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if self.options is None:
            del out["options"]
        return out


def upgrade_recorded(target: dict[str, Any]) -> dict[str, Any]:
    """A target as recorded before backend settings moved under ``options``, as recorded now."""
    out = {k: v for k, v in target.items() if k not in MOVED_TO_OPTIONS}
    if any(target.get(k) for k in MOVED_TO_OPTIONS) and "options" not in out:  # a remote target
        out["options"] = {"urls": list(target.get("urls") or []), "token_env": target.get("token_env"),
                          "token_file": target.get("token_file")}
    return out


def load_targets(path: str | Path | None = None) -> dict[str, Target]:
    """Targets from a YAML file (default: the shipped ``targets.yaml``); bad input is a ConfigError."""
    path = Path(path) if path is not None else SHIPPED_TARGETS
    data = load_yaml_mapping(path)
    if not data:
        raise ConfigError("expected a mapping of target name -> fields", file=path)
    return {str(name): Target.from_dict(str(name), fields, str(path)) for name, fields in data.items()}


def get_target(name: str, path: str | Path | None = None, *, source: str | Path | None = None) -> Target:
    """One target by name from ``load_targets(path)``.

    Raises:
        ConfigError: an unknown name (key ``target``, in ``source`` when given: the file
            that named it); the message lists the close matches and the known targets.
    """
    targets = load_targets(path)
    if name not in targets:
        raise ConfigError(f"unknown target {name!r}{did_you_mean(name, targets)}; known: {', '.join(targets)}",
                          file=source, key="target")
    return targets[name]

