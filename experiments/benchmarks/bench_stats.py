"""Statistics the benchmark reports add to ``dime_nas.search.stats``: paired bootstrap
differences of rank agreement, a proxy's agreement with itself across seeds, and
hypervolume-curve summaries (pure numpy)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np


def paired_difference_interval(stat: Callable[[np.ndarray, np.ndarray], float], a: Sequence[float],
                               b: Sequence[float], y: Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
                               seed: int = 0) -> dict[str, float]:
    """``stat(a, y) - stat(b, y)`` with a percentile bootstrap interval, resampling students
    (the same resample for both predictors, so their shared noise cancels).

    Also returns ``p_not_above``: the share of resamples in which ``a`` does not beat ``b``.
    Resamples where either statistic is undefined (NaN) are dropped.
    """
    a, b, y = (np.asarray(v, dtype=float) for v in (a, b, y))
    if not (a.shape == b.shape == y.shape) or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need three 1-D sequences of equal length >= 2, got {a.shape}, {b.shape}, {y.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    diffs = np.array([stat(a[k], y[k]) - stat(b[k], y[k]) for k in idx])
    diffs = diffs[~np.isnan(diffs)]
    lo, hi = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2]) if len(diffs) else (np.nan, np.nan)
    return {"diff": float(stat(a, y) - stat(b, y)), "lo": float(lo), "hi": float(hi),
            "p_not_above": float(np.mean(diffs <= 0)) if len(diffs) else float("nan")}


def seed_agreement(stat: Callable[[np.ndarray, np.ndarray], float], by_seed: np.ndarray) -> dict[str, float]:
    """How well a noisy score agrees with itself: ``stat`` between every pair of seeds.

    ``by_seed``: (n_students, n_seeds). Returns the mean, min and max over seed pairs —
    a ceiling on how well one seed of the score can rank anything else.
    """
    m = np.asarray(by_seed, dtype=float)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError(f"need an (n_students, n_seeds >= 2) array, got shape {m.shape}")
    values = [stat(m[:, i], m[:, j]) for i, j in combinations(range(m.shape[1]), 2)]
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)),
            "pairs": len(values)}


def pooled_std(by_seed: np.ndarray) -> float:
    """Root mean square of the per-row sample standard deviations (ddof 1)."""
    m = np.asarray(by_seed, dtype=float)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError(f"need an (n, k >= 2) array, got shape {m.shape}")
    return float(np.sqrt(np.mean(np.var(m, axis=1, ddof=1))))


def ratio_at(curves: Sequence[Sequence[float]], total: float, k: int) -> dict[str, float]:
    """Hypervolume curves divided by ``total`` read after ``k`` trials (1-based): mean, min, max, std."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    c = np.asarray(curves, dtype=float)
    if c.ndim != 2 or c.shape[1] < k:
        raise ValueError(f"need (runs, >= {k}) curves, got shape {c.shape}")
    v = c[:, k - 1] / total
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def trials_to_reach(curve: Sequence[float], total: float, fraction: float) -> int | None:
    """First trial count (1-based) at which ``curve / total >= fraction``; None if never."""
    c = np.asarray(curve, dtype=float) / total
    hit = np.nonzero(c >= fraction - 1e-12)[0]
    return int(hit[0]) + 1 if len(hit) else None
