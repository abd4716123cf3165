"""Statistics for judging a search and a deliverable: rank agreement with intervals, hypervolume
curves, intervals of summed medians (latency).

Pure numpy (scipy is not needed); ties are handled the way scipy's defaults do
(Kendall's tau-b, Spearman's rho on average ranks), so results agree with
``scipy.stats.kendalltau`` / ``spearmanr``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .pareto import hypervolume


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-D sequences of equal length, got shapes {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError("need at least 2 pairs")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("values contain NaN")
    return a, b


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x)(n0 - ties_y)).

    NaN when either sequence is constant (no ranking to agree with).
    """
    a, b = _pair(x, y)
    i, j = np.triu_indices(len(a), k=1)
    sx, sy = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n0 = len(i)
    denom = np.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
    if denom == 0:
        return float("nan")
    return float((sx * sy).sum() / denom) if n0 else float("nan")


def _average_ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):  # tied values share the mean of their ranks
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the average ranks. NaN if either is constant."""
    a, b = _pair(x, y)
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def bootstrap_interval(stat: Callable[[np.ndarray, np.ndarray], float], x: Sequence[float], y: Sequence[float],
                       *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(x, y)``, resampling pairs (students) with replacement.

    Resamples where the statistic is undefined (NaN, e.g. every pick tied) are dropped.
    """
    a, b = _pair(x, y)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    values = np.array([stat(a[k], b[k]) for k in idx])
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def sum_of_medians_interval(groups: Sequence[Sequence[float]], *, n_boot: int = 2000, level: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the sum of the groups' medians (one group: its median).

    Each group (e.g. one tower's session medians) is resampled on its own, with replacement.
    """
    arrays = [np.asarray(g, dtype=float) for g in groups]
    if not arrays or any(a.ndim != 1 or len(a) == 0 or not np.all(np.isfinite(a)) for a in arrays):
        raise ValueError("need at least one group, each a non-empty 1-D sequence of finite values")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    total = sum(np.median(a[rng.integers(0, len(a), size=(n_boot, len(a)))], axis=1) for a in arrays)
    lo, hi = np.quantile(total, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def rank_agreement(x: Sequence[float], y: Sequence[float], *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """tau and rho with their bootstrap 95% intervals, as a flat dict."""
    t_lo, t_hi = bootstrap_interval(kendall_tau, x, y, n_boot=n_boot, seed=seed)
    r_lo, r_hi = bootstrap_interval(spearman_rho, x, y, n_boot=n_boot, seed=seed)
    return {"tau": kendall_tau(x, y), "tau_lo": t_lo, "tau_hi": t_hi,
            "rho": spearman_rho(x, y), "rho_lo": r_lo, "rho_hi": r_hi, "n": len(x)}


def hypervolume_curve(points: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> list[float]:
    """Hypervolume of the first k points, for k = 1..n (points in trial order).

    Non-decreasing by construction; use one fixed ``reference`` for every run compared.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D (n, d) array, got shape {pts.shape}")
    return [hypervolume(pts[: k + 1], directions, reference) for k in range(len(pts))]
