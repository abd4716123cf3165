"""Targets: named descriptions of the hardware and runtime a latency is measured on.

Shipped targets live in ``targets.yaml`` next to this file; a project can pass its own
YAML (a mapping of target name -> fields). Every field is validated and an unknown
key is an error that names the key, the target and the file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean
from ..typed_yaml import load_yaml_mapping

SHIPPED_TARGETS = Path(__file__).with_name("targets.yaml")
# "remote": measured by agents on the device (`dime-nas agent`, client in cost/remote.py).
BACKENDS = ("onnxruntime", "torch", "remote")
PRECISIONS = ("fp32", "int8")
TOWERS = ("image", "text")


@dataclass(frozen=True)
class Target:
    """Where and how a latency is measured."""

    name: str  # key in the targets file, e.g. "local-cpu"
    description: str  # the hardware and runtime in words
    backend: str = "onnxruntime"  # "onnxruntime", "torch" (eager comparison) or "remote"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # onnxruntime EPs, in preference order
    intra_op_threads: int = 2  # threads inside one op (onnxruntime intra-op / torch.set_num_threads)
    batch_size: int = 1  # inputs per call
    towers: tuple[str, ...] = ("image",)  # towers whose latencies are summed (the deployed ones)
    precision: str = "fp32"  # "fp32" or "int8" (dynamic-quantised ONNX)
    warmup: int = 10  # untimed runs first (allocations, caches, thread pools)
    runs: int = 50  # timed runs (median and percentiles over these)
    sessions: int = 1  # runs split over this many fresh sessions; the median of their medians is kept
    urls: tuple[str, ...] = ()  # remote: the agents serving this target (YAML: url or urls); spread over
    token_env: str | None = None  # remote: environment variable holding the agents' token
    token_file: str | None = None  # remote: file holding the agents' token (instead of token_env)

    def __post_init__(self) -> None:
        where = f"target {self.name!r}"
        if self.backend not in BACKENDS:
            raise ConfigError(f"{where}: backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{where}: precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.backend == "torch" and self.precision != "fp32":
            raise ConfigError(f"{where}: the torch (eager) backend measures fp32 only")
        if self.backend == "torch" and self.sessions != 1:
            raise ConfigError(f"{where}: sessions are onnxruntime's; the torch (eager) backend has none")
        if not self.towers or any(t not in TOWERS for t in self.towers) or len(set(self.towers)) != len(self.towers):
            raise ConfigError(f"{where}: towers must be distinct names from {TOWERS}, got {list(self.towers)}")
        if not self.providers or not all(isinstance(p, str) and p for p in self.providers):
            raise ConfigError(f"{where}: providers must be a non-empty list of names")
        for name in ("intra_op_threads", "batch_size", "runs", "sessions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}")
        if self.backend == "remote":
            if not self.urls or not all(isinstance(u, str) and u.startswith(("http://", "https://"))
                                        for u in self.urls):
                raise ConfigError(f"{where}: a remote target needs url (or urls): http(s)://HOST:PORT of its agents")
            if (self.token_env is None) == (self.token_file is None):
                raise ConfigError(f"{where}: a remote target needs exactly one of token_env or token_file")
        elif self.urls or self.token_env or self.token_file:
            raise ConfigError(f"{where}: url, urls, token_env and token_file are for backend: remote")
        if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 0:
            raise ConfigError(f"{where}: warmup must be a non-negative integer, got {self.warmup!r}")
        if self.sessions > self.runs:
            raise ConfigError(f"{where}: sessions ({self.sessions}) must not exceed runs ({self.runs})")

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any], source: str = "<dict>") -> Target:
        """Build a target from its YAML fields; a ConfigError names the source, the target and the key."""
        if not isinstance(data, dict):
            raise ConfigError(f"target {name!r} must be a mapping of fields", file=source)
        known = ({f.name for f in dataclasses.fields(cls)} - {"name"}) | {"url"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"target {name!r} has unknown key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))})", file=source)
        if "description" not in data:
            raise ConfigError(f"target {name!r} needs a description", file=source)
        kwargs = dict(data)
        if "url" in kwargs:
            if "urls" in kwargs:
                raise ConfigError(f"target {name!r}: give url or urls, not both", file=source)
            kwargs["urls"] = kwargs.pop("url")
        for key in ("providers", "towers", "urls"):
            if key in kwargs:
                value = kwargs[key]
                kwargs[key] = (value,) if isinstance(value, str) else tuple(value)
        try:
            return cls(name=name, **kwargs)
        except ConfigError as err:
            raise ConfigError(err.problem, file=source) from None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["providers"], out["towers"], out["urls"] = list(self.providers), list(self.towers), list(self.urls)
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

