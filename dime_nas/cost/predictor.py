"""Latency prediction from towers already measured on a target.

A sample is one measured tower: its StudentConfig, its MACs and parameters, the
target's precision, batch and threads, and the median latency measured there. Features
per tower: log MACs (and its square), log params, log tokens, layers, width, heads, MLP ratio,
resolution, patch size, precision, batch, threads and the tower's family (ViT, each
timm model, text transformer). Three regressors of log latency are compared by k-fold
cross-validation, a log-linear model fitted by least squares (ridge), the same model
fitted with the Huber loss (robust: a tower that one slow spell or one slow onnxruntime
session mis-measured pulls the fit less) and gradient boosting (scikit-learn), and the
one with the lower MAPE is kept. A saved predictor is a JSON file holding its
samples and choice; loading refits it (deterministic, and no pickle to trust).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "dime-nas-latency-predictor/1"
KINDS = ("log-linear", "robust-log-linear", "gradient-boosting")
NUMERIC = ("log_gmacs", "log_gmacs_sq", "log_params", "log_tokens", "log_layers", "log_width", "heads", "mlp_ratio",
           "log_image_size", "patch_size", "int8", "log_batch", "threads")
MIN_SAMPLES = 8


def family(config: dict[str, Any], tower: str) -> str:
    """The tower's architecture family: "vit", "timm:<model>" or "text"."""
    if tower == "text":
        return "text"
    vision = config.get("vision", {})
    return f"timm:{vision.get('timm_model')}" if vision.get("kind") == "timm" else str(vision.get("kind", "vit"))


def tower_features(sample: dict[str, Any]) -> dict[str, float]:
    """The numeric features of one measured (or candidate) tower."""
    config, tower = sample["config"], sample["tower"]
    part = config.get("text" if tower == "text" else "vision", {})
    if tower == "text":
        size, patch = 0, 0
        tokens = part.get("context_length") or 77
    else:
        size = part.get("image_size") or 224
        patch = part.get("patch_size") or 0
        tokens = (size // patch) ** 2 + 1 if patch else (size / 32) ** 2  # convnets: cells of the last stage
    return {
        "log_gmacs": math.log(max(float(sample["gmacs"]), 1e-6)),
        "log_gmacs_sq": math.log(max(float(sample["gmacs"]), 1e-6)) ** 2,  # fixed costs bend the log-log line
        "log_params": math.log(max(float(sample["params"]), 1.0)),
        "log_tokens": math.log(max(float(tokens), 1.0)),
        "log_layers": math.log(part.get("layers") or 1),
        "log_width": math.log(part.get("width") or 1),
        "heads": float(part.get("heads") or 0),
        "mlp_ratio": float(part.get("mlp_ratio") or 0.0),
        "log_image_size": math.log(size) if size else 0.0,
        "patch_size": float(patch),
        "int8": 1.0 if sample.get("precision") == "int8" else 0.0,
        "log_batch": math.log(sample.get("batch", 1)),
        "threads": float(sample.get("threads", 1)),
    }


def _regressor(kind: str, seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import HuberRegressor, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "log-linear":
        return make_pipeline(StandardScaler(), Ridge(alpha=1e-2))
    if kind == "robust-log-linear":
        return make_pipeline(StandardScaler(), HuberRegressor(epsilon=1.35, alpha=1e-2, max_iter=2000))
    if kind == "gradient-boosting":
        return GradientBoostingRegressor(n_estimators=300, max_depth=3, learning_rate=0.05, subsample=0.8,
                                         random_state=seed)
    raise ValueError(f"unknown predictor kind {kind!r}; known: {', '.join(KINDS)}")


def errors(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """MAPE and the share of predictions within +-10% of the measurement."""
    rel = np.abs(np.asarray(predicted) / np.asarray(measured) - 1.0)
    return {"n": int(rel.size), "mape": float(rel.mean()), "within_10": float(np.mean(rel <= 0.10)),
            "max_error": float(rel.max())}


@dataclass
class LatencyPredictor:
    """A fitted per-tower latency model of one target (see the module docstring)."""

    target: str
    kind: str
    samples: list[dict[str, Any]]
    families: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    _model: Any = None

    def matrix(self, samples: list[dict[str, Any]]) -> np.ndarray:
        rows = []
        for s in samples:
            f = tower_features(s)
            fam = family(s["config"], s["tower"])
            rows.append([f[k] for k in NUMERIC] + [1.0 if fam == known else 0.0 for known in self.families])
        return np.asarray(rows, dtype=np.float64)

    def refit(self) -> LatencyPredictor:
        """Fit the chosen regressor on all samples."""
        if len(self.samples) < 2:
            raise ValueError(f"target {self.target!r}: {len(self.samples)} measured tower(s) is too few to fit")
        self.families = sorted({family(s["config"], s["tower"]) for s in self.samples})
        self._model = _regressor(self.kind, self.seed).fit(self.matrix(self.samples), _log_ms(self.samples))
        return self

    def predict_tower_ms(self, samples: list[dict[str, Any]]) -> np.ndarray:
        """Predicted median latency (ms) of each tower (samples without ``median_ms``)."""
        return np.exp(self._model.predict(self.matrix(samples)))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format": FORMAT, "target": self.target, "kind": self.kind, "seed": self.seed,
                                    "report": self.report, "samples": self.samples}, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyPredictor:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a dime-nas latency predictor (format {data.get('format')!r})")
        return cls(data["target"], data["kind"], data["samples"], report=data.get("report", {}),
                   seed=data.get("seed", 0)).refit()


def _log_ms(samples: list[dict[str, Any]]) -> np.ndarray:
    return np.log(np.asarray([float(s["median_ms"]) for s in samples]))


def cross_validate(samples: list[dict[str, Any]], target: str, seed: int = 0, folds: int = 5) -> dict[str, Any]:
    """K-fold errors of every kind on ``samples`` (each fold fitted from scratch)."""
    from sklearn.model_selection import KFold

    y = np.asarray([float(s["median_ms"]) for s in samples])
    out = {}
    for kind in KINDS:
        predicted = np.empty_like(y)
        for train, test in KFold(n_splits=min(folds, len(samples)), shuffle=True, random_state=seed).split(y):
            model = LatencyPredictor(target, kind, [samples[i] for i in train], seed=seed).refit()
            predicted[test] = model.predict_tower_ms([samples[i] for i in test])
        out[kind] = errors(predicted, y)
    return out


def fit_predictor(samples: list[dict[str, Any]], target: str, *, holdout: float = 0.3,
                  seed: int = 0) -> LatencyPredictor:
    """Pick a kind by cross-validation, report its error on a held-out share, fit on all.

    ``report`` holds: cross-validated errors of each kind (on the fitting share), the
    held-out errors of the chosen kind (fitted without the held-out towers), sizes.
    With ``holdout`` 0 the cross-validated error of the choice stands in for it.
    """
    if len(samples) < MIN_SAMPLES:
        raise ValueError(f"target {target!r}: {len(samples)} measured tower(s); at least {MIN_SAMPLES} are needed")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    order = np.random.default_rng(seed).permutation(len(samples))
    n_test = int(round(holdout * len(samples)))
    test = [samples[i] for i in order[:n_test]]
    train = [samples[i] for i in order[n_test:]]
    cv = cross_validate(train, target, seed)
    kind = min(KINDS, key=lambda k: cv[k]["mape"])
    if test:
        model = LatencyPredictor(target, kind, train, seed=seed).refit()
        held = errors(model.predict_tower_ms(test), np.asarray([s["median_ms"] for s in test]))
    else:
        held = {**cv[kind], "note": "no held-out share: cross-validated error"}
    predictor = LatencyPredictor(target, kind, list(samples), seed=seed).refit()
    predictor.report = {"samples": len(samples), "fit_on": len(train), "cross_validation": cv, "held_out": held,
                        "kind": kind, "target": target}
    return predictor


# ---- measurements from a trial or a file ------------------------------------------------------

def samples_from_cost(config: dict[str, Any], cost: dict[str, Any], target: dict[str, Any]) -> list[dict[str, Any]]:
    """Measured towers of one trial's cost record (towers without a measurement are skipped)."""
    out = []
    for tower, c in cost.get("per_tower", {}).items():
        if c.get("latency_median_ms") is None:
            continue
        out.append({"target": target["name"], "tower": tower, "config": config, "gmacs": c["gmacs"],
                    "params": c["params"], "precision": target.get("precision", "fp32"),
                    "batch": target.get("batch_size", 1), "threads": target.get("intra_op_threads", 1),
                    "median_ms": c["latency_median_ms"]})
    return out


def load_measurements(path: str | Path, target: str) -> list[dict[str, Any]]:
    """Measured towers of ``target`` from a MEASUREMENTS.jsonl file (a run folder's are read by
    ``search/measurements.py``)."""
    path = Path(path)
    samples = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                samples.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{i}: not JSON: {err}") from None
    missing = [k for k in ("target", "tower", "config", "gmacs", "params", "median_ms")
               if samples and k not in samples[0]]
    if missing:
        raise ValueError(f"{path}: measurements need the fields {missing}")
    return [s for s in samples if s["target"] == target]
