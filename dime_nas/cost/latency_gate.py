"""Decide a candidate's latency by prediction when it is clearly far from the budget.

With ``latency_predictor`` in the experiment, each trial's towers are first predicted
(after MACs are counted, before anything is exported): a sum clearly over the budget
(``> budget * (1 + margin)``) or clearly under it (``< budget * (1 - margin)``) is
taken as the trial's latency without measuring, and the cost record says so
(``latency_source: predicted``, ``latency_prediction``). Everything near the budget is
measured, and every measurement is added to the predictor's samples, which is refitted
every ``refit_every`` new ones. Decisions start once ``min_measurements`` towers are
known (a saved predictor's samples count), and a candidate is decided only when each of
its towers' families (ViT, each timm model, text) has ``min_per_family`` measured towers
in the fitted predictor: a family it has not seen would be extrapolated from the others.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .predictor import LatencyPredictor, family, fit_predictor, samples_from_cost
from .targets import Target

if TYPE_CHECKING:
    from ..config import LatencyPredictorConfig

_log = logging.getLogger(__name__)


class LatencyGate:
    """The predictor of one search, its samples, and the decision rule."""

    def __init__(self, options: LatencyPredictorConfig, target: Target, budget_ms: float) -> None:
        self.options, self.target, self.budget_ms = options, target, budget_ms
        self.samples: list[dict[str, Any]] = []
        self.predictor: LatencyPredictor | None = None
        self._new = 0
        if options.path:
            saved = LatencyPredictor.load(options.path)
            if saved.target != target.name:
                raise ConfigError(f"{options.path} predicts target {saved.target!r}, this search measures on "
                                  f"{target.name!r}", key="latency_predictor.path")
            self.samples, self.predictor = list(saved.samples), saved

    def decide(self, config: dict[str, Any], cost: dict[str, Any]) -> dict[str, Any] | None:
        """The latency fields of a decision by prediction, or None (measure it)."""
        if self.predictor is None or len(self.samples) < self.options.min_measurements:
            return None
        towers = [{"tower": name, "config": config, "gmacs": c["gmacs"], "params": c["params"],
                   "precision": self.target.precision, "batch": self.target.batch_size,
                   "threads": self.target.intra_op_threads} for name, c in cost["per_tower"].items()]
        predicted = float(self.predictor.predict_tower_ms(towers).sum())
        margin = self.options.margin
        known = Counter(family(s["config"], s["tower"]) for s in self.predictor.samples)
        # a family measured too rarely is extrapolated from the others: measure it (it also teaches the most)
        familiar = all(known[family(config, t["tower"])] >= self.options.min_per_family for t in towers)
        if familiar and predicted > self.budget_ms * (1 + margin):
            decision = f"over budget by prediction ({predicted:.3g} ms > {1 + margin:g} x {self.budget_ms:g} ms)"
        elif familiar and predicted < self.budget_ms * (1 - margin):
            decision = f"under budget by prediction ({predicted:.3g} ms < {1 - margin:g} x {self.budget_ms:g} ms)"
        else:
            cost["latency_predicted_ms"] = predicted  # measured next; kept to show the predictor's error
            return None
        return {"latency_ms": predicted, "latency_source": "predicted", "latency_predicted_ms": predicted,
                "latency_prediction": decision, "predictor": self.predictor.kind}

    def observe(self, config: dict[str, Any], cost: dict[str, Any]) -> None:
        """Add a trial's measured towers; refit when enough new ones have come."""
        new = samples_from_cost(config, cost, self.target.to_dict())
        self.samples += new
        self._new += len(new)
        due = self.predictor is None or self._new >= self.options.refit_every
        if due and len(self.samples) >= self.options.min_measurements:
            self.predictor = fit_predictor(self.samples, self.target.name, holdout=0.0)
            self._new = 0
            _log.info("latency predictor refitted on %d towers (%s, cross-validated MAPE %.1f%%)",
                      len(self.samples), self.predictor.kind, 100 * self.predictor.report["held_out"]["mape"])

