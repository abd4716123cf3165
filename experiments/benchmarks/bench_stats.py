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


# ---- zero-cost rules and rankings within groups of students ----------------------------------

FAMILY_RULES = ("family rule: convnet above ViT", "family rule: convnet above ViT, own text tower below")


def family_rules(families: Sequence[str], text_kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """Scores that rank students by group membership alone (higher = predicted better): a convnet
    image tower ("timm") above a ViT, and then, within a family, the teacher's text tower above a
    student-trained one ("transformer"). Ties within a group are left tied."""
    convnet = (np.asarray(families) == "timm").astype(float)
    own_text = (np.asarray(text_kinds) == "transformer").astype(float)
    return {FAMILY_RULES[0]: convnet, FAMILY_RULES[1]: 2 * convnet - own_text}


def group_agreement(stat: Callable[[np.ndarray, np.ndarray], float], x: Sequence[float], y: Sequence[float],
                    groups: dict[str, Sequence[bool]], *, n_boot: int = 2000, seed: int = 0) -> dict[str, dict]:
    """``stat(x, y)`` with a percentile bootstrap 95% interval within each group (a boolean mask over
    students). A group of fewer than 3 students, or one where ``x`` or ``y`` is constant (a rule that
    ties the whole group), gets None: there is no ranking to agree with."""
    from dime_nas.search.stats import bootstrap_interval

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    out: dict[str, dict | None] = {}
    for name, mask in groups.items():
        m = np.asarray(mask, dtype=bool)
        if m.sum() < 3 or np.ptp(x[m]) == 0 or np.ptp(y[m]) == 0:
            out[name] = None
            continue
        lo, hi = bootstrap_interval(stat, x[m], y[m], n_boot=n_boot, seed=seed)
        out[name] = {"n": int(m.sum()), "value": stat(x[m], y[m]), "lo": lo, "hi": hi}
    return out


def group_differences(stat: Callable[[np.ndarray, np.ndarray], float], a: Sequence[float], b: Sequence[float],
                      y: Sequence[float], groups: dict[str, Sequence[bool]], *, n_boot: int = 2000,
                      seed: int = 0) -> dict[str, dict | None]:
    """``paired_difference_interval`` of ``a`` over ``b`` within each group; None where either is
    constant in the group (no ranking to compare) or the group has fewer than 3 students."""
    a, b, y = (np.asarray(v, dtype=float) for v in (a, b, y))
    out: dict[str, dict | None] = {}
    for name, mask in groups.items():
        m = np.asarray(mask, dtype=bool)
        if m.sum() < 3 or np.ptp(a[m]) == 0 or np.ptp(b[m]) == 0 or np.ptp(y[m]) == 0:
            out[name] = None
            continue
        out[name] = paired_difference_interval(stat, a[m], b[m], y[m], n_boot=n_boot, seed=seed)
    return out


def permutation_p_greater(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 200_000,
                          seed: int = 0) -> float:
    """One-sided permutation test that ``a`` is larger than ``b`` (difference of means): the share
    of relabellings of the pooled values whose difference is at least the observed one. Exact
    (every split) when there are at most ``n_resamples`` splits, else a Monte Carlo estimate."""
    from itertools import combinations
    from math import comb

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or len(a) < 1 or len(b) < 1:
        raise ValueError(f"need two non-empty 1-D samples, got shapes {a.shape} and {b.shape}")
    pooled, k = np.concatenate([a, b]), len(a)
    observed = a.mean() - b.mean()
    total = pooled.sum()
    if comb(len(pooled), k) <= n_resamples:
        sums = pooled[np.array(list(combinations(range(len(pooled)), k)))].sum(1)
    else:
        rng = np.random.default_rng(seed)
        sums = np.array([pooled[rng.permutation(len(pooled))[:k]].sum() for _ in range(n_resamples)])
    diffs = sums / k - (total - sums) / len(b)
    return float(np.mean(diffs >= observed - 1e-12))
