"""Pareto maths for the search reporter: pure numpy, any number of objectives.

Every function takes ``points`` as an (n, d) array in the objectives' own units and a
``directions`` sequence of ``"minimize"``/``"maximize"`` (``"min"``/``"max"`` also
accepted), one per column. Internally, maximised columns are negated so that all
maths is minimisation; results (indices, reference points, volumes) are stated in
the caller's units and directions.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..metrics import METRICS

_SIGN = {"minimize": 1.0, "min": 1.0, "maximize": -1.0, "max": -1.0}


def _signs(directions: Sequence[str], d: int) -> np.ndarray:
    if len(directions) != d:
        raise ValueError(f"got {len(directions)} directions for {d} objectives")
    bad = [x for x in directions if x not in _SIGN]
    if bad:
        raise ValueError(f"directions must be 'minimize' or 'maximize', got {bad}")
    return np.array([_SIGN[x] for x in directions])


def _as_min(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Validated (n, d) float copy of ``points`` with maximised columns negated."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D (n, d) array, got shape {pts.shape}")
    if np.isnan(pts).any():
        raise ValueError("points contain NaN")
    return pts * _signs(directions, pts.shape[1])


def _non_dominated_min(pts: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the rows of a minimisation array no other row dominates."""
    # Visit points in order of coordinate sum, so that strong points come first and
    # prune most of the rest; each visit drops the survivors the visited point
    # dominates. Only non-dominated points are never dropped, so all get visited.
    with np.errstate(invalid="ignore"):  # +inf and -inf in one row sum to NaN: fine
        order = np.argsort(pts.sum(axis=1), kind="stable")
    alive, vals = order, pts[order]
    i = 0
    while i < len(alive):
        p = vals[i]
        dominated = (vals >= p).all(axis=1) & (vals > p).any(axis=1)
        if dominated.any():
            alive, vals = alive[~dominated], vals[~dominated]
            i = int((~dominated[:i]).sum())  # p's new position: it survives itself
        i += 1
    return np.sort(alive)


def non_dominated(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Indices of the non-dominated points (the Pareto set), in ascending order.

    A point dominates another if it is no worse in every objective and strictly
    better in at least one. Identical points do not dominate each other, so every
    copy of a non-dominated point is kept. Typically O(n · |front| · d) time (O(n² d)
    at worst), vectorised per visited point (10k random 3-D points: well under a
    second).

    Args:
        points: (n, d) objective values.
        directions: ``"minimize"`` or ``"maximize"`` per objective.

    Returns:
        int array of row indices into ``points``.
    """
    return _non_dominated_min(_as_min(points, directions))


def _hv_min(pts: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of minimisation points that all strictly dominate ``ref``."""
    n, d = pts.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(ref[0] - pts[:, 0].min())
    if d == 2:
        # Sweep along x: each point's strip reaches the next x, at the best y so far.
        order = np.lexsort((pts[:, 1], pts[:, 0]))
        x, y = pts[order, 0], pts[order, 1]
        widths = np.diff(np.append(x, ref[0]))
        return float((widths * (ref[1] - np.minimum.accumulate(y))).sum())
    # Slice along the last objective (HSO): between consecutive levels the
    # dominated region is the (d-1)-D hypervolume of the points already reached.
    pts = pts[_non_dominated_min(pts)]
    levels = np.unique(pts[:, -1])
    bounds = np.append(levels[1:], ref[-1])
    total = 0.0
    for level, upper in zip(levels, bounds):
        reached = pts[pts[:, -1] <= level, :-1]
        total += _hv_min(reached, ref[:-1]) * (upper - level)
    return total


def hypervolume(points: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference``.

    The reference point is stated in the objectives' own units and directions
    (e.g. a latency ceiling for a minimised latency, an accuracy floor for a
    maximised accuracy). Points that do not strictly dominate the reference in
    every objective contribute nothing. 2-D uses a sort-and-sweep; ≥ 3-D uses the
    HSO slicing recursion (fine for a few hundred front points in 3–4 D).

    Args:
        points: (n, d) objective values.
        directions: ``"minimize"`` or ``"maximize"`` per objective.
        reference: (d,) reference point.

    Returns:
        The hypervolume, in the product of the objectives' units.
    """
    pts = _as_min(points, directions)
    ref = np.asarray(reference, dtype=float)
    if ref.shape != (pts.shape[1],) or not np.isfinite(ref).all():
        raise ValueError(f"reference must be {pts.shape[1]} finite numbers, got {reference!r}")
    ref = ref * _signs(directions, pts.shape[1])
    inside = pts[(pts < ref).all(axis=1)]
    if not np.isfinite(inside).all():
        raise ValueError("points that dominate the reference must be finite")
    return _hv_min(inside, ref)


def default_reference(points: np.ndarray, directions: Sequence[str], margin: float = 0.1) -> np.ndarray:
    """A reference point for :func:`hypervolume`: the nadir pushed out by a margin.

    Per objective: the worst value among ``points`` moved further in the worse
    direction by ``margin`` × (max − min). Where an objective is constant, the
    range is taken as max(|value|, 1) so the reference stays strictly worse and
    every point still contributes.

    Args:
        points: (n, d) objective values, n ≥ 1, finite.
        directions: ``"minimize"`` or ``"maximize"`` per objective.
        margin: fraction of the range to push out by.

    Returns:
        (d,) reference point in the objectives' own units and directions.
    """
    pts = _as_min(points, directions)
    signs = _signs(directions, pts.shape[1])
    if len(pts) == 0 or not np.isfinite(pts).all():
        raise ValueError("default_reference needs at least one point, all finite")
    nadir = pts.max(axis=0)
    span = nadir - pts.min(axis=0)
    span = np.where(span > 0, span, np.maximum(np.abs(nadir), 1.0))
    return (nadir + margin * span) * signs


def _normalised_front(points: np.ndarray, directions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Front indices and their minimisation values scaled to [0, 1] per objective."""
    pts = _as_min(points, directions)
    if len(pts) == 0:
        raise ValueError("need at least one point")
    front = _non_dominated_min(pts)
    vals = pts[front]
    if not np.isfinite(vals).all():
        raise ValueError("front points must be finite")
    lo, hi = vals.min(axis=0), vals.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)  # a constant objective maps to 0
    return front, (vals - lo) / span


def knee_point(points: np.ndarray, directions: Sequence[str]) -> int:
    """Index of the knee of the Pareto front of ``points``.

    Each objective is normalised to [0, 1] over the front (dominated points are
    ignored). In 2-D the knee is the point farthest from the chord through the two
    extreme points, on the side of the ideal point (the classic max-distance-to-
    chord rule). With 3 or more objectives it is the front point nearest (Euclidean)
    to the ideal point, the origin of normalised space. Ties go to the lower index.

    Args:
        points: (n, d) objective values, n ≥ 1.
        directions: ``"minimize"`` or ``"maximize"`` per objective.

    Returns:
        Row index into ``points``.
    """
    front, z = _normalised_front(points, directions)
    if z.shape[1] == 2:
        a = z[np.lexsort((z[:, 1], z[:, 0]))[0]]  # best in objective 0
        b = z[np.lexsort((z[:, 0], z[:, 1]))[0]]  # best in objective 1
        chord = b - a
        # Signed 2-D cross product, positive on the ideal (lower-left) side since the
        # chord runs from upper-left to lower-right; its length is a common factor.
        score = chord[1] * (z[:, 0] - a[0]) - chord[0] * (z[:, 1] - a[1])
        return int(front[np.argmax(score)])
    return int(front[np.argmin(np.linalg.norm(z, axis=1))])


def top_k_along_front(points: np.ndarray, directions: Sequence[str], k: int) -> list[int]:
    """Up to ``k`` front points spread along the Pareto front, extremes first.

    Picks the best point of each objective (ties broken by the smallest sum of the
    other normalised objectives), then repeatedly the front point farthest from all
    picks so far in normalised objective space (farthest-point sampling). Identical
    points are picked once, so fewer than ``k`` indices come back when the front
    has fewer distinct points.

    Args:
        points: (n, d) objective values.
        directions: ``"minimize"`` or ``"maximize"`` per objective.
        k: number of picks wanted.

    Returns:
        Row indices into ``points``, in the order picked.
    """
    if k <= 0 or len(points) == 0:
        return []
    front, z = _normalised_front(points, directions)
    _, first = np.unique(z, axis=0, return_index=True)  # drop identical copies
    first = np.sort(first)
    front, z = front[first], z[first]

    picks: list[int] = []  # positions in ``front``
    for j in range(z.shape[1]):
        others = z.sum(axis=1) - z[:, j]
        best = int(np.lexsort((others, z[:, j]))[0])
        if best not in picks:
            picks.append(best)
    picks = picks[:k]
    nearest = np.min(np.linalg.norm(z[:, None, :] - z[None, picks, :], axis=2), axis=1)
    while len(picks) < min(k, len(z)):
        nxt = int(np.argmax(nearest))
        picks.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(z - z[nxt], axis=1))
    return [int(front[p]) for p in picks]


def experiment_reference(objectives: Sequence[str], directions: Sequence[str], budgets: Sequence[Any],
                         stated: dict[str, float] | None = None) -> tuple[list[float] | None, str]:
    """A hypervolume reference point fixed by the experiment, so hypervolumes compare across runs.

    Per objective: the value the experiment states (``search.hv_reference``), else the
    bound of a budget on it (``latency_ms <= 8`` -> 8), else 0 for a quality metric
    bounded below by 0. Returns (None, why) when some objective has none of these.
    """
    stated = stated or {}
    ref, rules = [], []
    for metric, direction in zip(objectives, directions):
        bound = [b.value for b in budgets if b.metric == metric
                 and (b.op == "<=") == (direction == "minimize")]
        if metric in stated:
            ref.append(float(stated[metric]))
            rules.append(f"{metric} {stated[metric]:g} (stated)")
        elif bound:
            worst = max(bound) if direction == "minimize" else min(bound)
            ref.append(float(worst))
            rules.append(f"{metric} {worst:g} (its budget)")
        elif metric in METRICS and METRICS[metric].bounded and direction == "maximize":
            ref.append(0.0)
            rules.append(f"{metric} 0 (its floor)")
        else:
            return None, f"no fixed reference for {metric}: state it in search.hv_reference"
    return ref, "fixed by the experiment: " + ", ".join(rules)
