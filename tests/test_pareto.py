"""Pareto maths against brute force, hand-computed volumes and Monte Carlo."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dime_nas.search.pareto import (
    default_reference,
    hypervolume,
    knee_point,
    non_dominated,
    top_k_along_front,
)

MIN, MAX = "minimize", "maximize"


def _brute_non_dominated(points: np.ndarray, directions: list[str]) -> list[int]:
    """Explicit double loop, comparing each objective in its own direction."""

    def no_worse(a: float, b: float, direction: str) -> bool:
        return a <= b if direction == MIN else a >= b

    keep = []
    for i, p in enumerate(points):
        dominated = False
        for j, q in enumerate(points):
            if j == i:
                continue
            all_no_worse = all(no_worse(qk, pk, dk) for qk, pk, dk in zip(q, p, directions))
            some_better = any(qk != pk for qk, pk in zip(q, p))
            if all_no_worse and some_better:
                dominated = True
                break
        if not dominated:
            keep.append(i)
    return keep


def _box_union_volume(points: np.ndarray, ref: np.ndarray) -> float:
    """Inclusion–exclusion over all subsets of minimisation boxes [p, ref]."""
    boxes = [p for p in points if (p < ref).all()]
    total = 0.0
    for size in range(1, len(boxes) + 1):
        for subset in itertools.combinations(boxes, size):
            corner = np.max(subset, axis=0)  # intersection of boxes [p, ref]
            total += (-1) ** (size + 1) * np.prod(ref - corner)
    return total


# ---- non_dominated ------------------------------------------------------------------


# Small integers force ties; infinities (an unmeasurable latency, say) must order too.
_VALUE = st.one_of(st.integers(0, 4).map(float), st.sampled_from([np.inf, -np.inf]))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda d: st.tuples(
            st.lists(st.lists(_VALUE, min_size=d, max_size=d), min_size=0, max_size=25),
            st.lists(st.sampled_from([MIN, MAX]), min_size=d, max_size=d),
        )
    )
)
def test_non_dominated_matches_brute_force(case: tuple[list[list[int]], list[str]]) -> None:
    rows, directions = case
    points = np.array(rows, dtype=float).reshape(len(rows), len(directions))
    got = non_dominated(points, directions)
    assert got.tolist() == _brute_non_dominated(points, directions)


def test_non_dominated_blocks_and_float_data() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(300, 3))
    dirs = [MIN, MAX, MIN]
    assert non_dominated(points, dirs).tolist() == _brute_non_dominated(points, dirs)


def test_non_dominated_keeps_identical_copies_and_flips_max() -> None:
    points = np.array([[1.0, 5.0], [1.0, 5.0], [2.0, 5.0], [2.0, 1.0]])
    assert non_dominated(points, [MIN, MAX]).tolist() == [0, 1]
    assert non_dominated(points, [MIN, MIN]).tolist() == [0, 1, 3]
    # Maximising the first objective and minimising the second: (2, 1) wins alone.
    assert non_dominated(points, [MAX, MIN]).tolist() == [3]


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="directions"):
        non_dominated(np.zeros((2, 2)), [MIN, "lower"])
    with pytest.raises(ValueError, match="2 directions for 3"):
        non_dominated(np.zeros((2, 3)), [MIN, MIN])
    with pytest.raises(ValueError, match="NaN"):
        non_dominated(np.array([[np.nan, 1.0]]), [MIN, MIN])
    with pytest.raises(ValueError, match="reference"):
        hypervolume(np.zeros((1, 2)), [MIN, MIN], [1.0])


# ---- hypervolume --------------------------------------------------------------------


def test_hypervolume_2d_hand_computed() -> None:
    assert hypervolume(np.array([[1.0, 2.0]]), [MIN, MIN], [3.0, 5.0]) == pytest.approx(2 * 3)
    # Boxes 3x1 and 2x3 overlapping in a 2x1 corner: 3 + 6 - 2.
    two = np.array([[1.0, 3.0], [2.0, 1.0]])
    assert hypervolume(two, [MIN, MIN], [4.0, 4.0]) == pytest.approx(7.0)
    # Worse than the reference, on its boundary, dominated, or a duplicate: no change.
    extra = np.array([[5.0, 0.0], [4.0, 0.5], [3.0, 3.5], [2.0, 1.0]])
    assert hypervolume(np.vstack([two, extra]), [MIN, MIN], [4.0, 4.0]) == pytest.approx(7.0)
    assert hypervolume(np.array([[5.0, 5.0]]), [MIN, MIN], [4.0, 4.0]) == 0.0
    assert hypervolume(np.empty((0, 2)), [MIN, MIN], [4.0, 4.0]) == 0.0


def test_hypervolume_3d_hand_computed() -> None:
    assert hypervolume(np.array([[1.0, 1.0, 1.0]]), [MIN] * 3, [2.0, 3.0, 4.0]) == pytest.approx(6.0)
    # Boxes 2x2x1 and 1x1x2 sharing the unit cube [1,2]^3: 4 + 2 - 1.
    two = np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    assert hypervolume(two, [MIN] * 3, [2.0, 2.0, 2.0]) == pytest.approx(5.0)
    with_worse = np.vstack([two, [[3.0, 0.0, 0.0]]])
    assert hypervolume(with_worse, [MIN] * 3, [2.0, 2.0, 2.0]) == pytest.approx(5.0)


def test_hypervolume_maximize_uses_reference_in_own_units() -> None:
    # Accuracy (maximised) 0.8 above a floor of 0.5, latency 10 ms under a 20 ms ceiling.
    assert hypervolume(np.array([[0.8, 10.0]]), [MAX, MIN], [0.5, 20.0]) == pytest.approx(0.3 * 10)
    # Flipping the signs of a column together with its direction changes nothing.
    rng = np.random.default_rng(1)
    pts = rng.uniform(size=(20, 3))
    ref = [1.1, 1.1, 1.1]
    base = hypervolume(pts, [MIN] * 3, ref)
    flipped = pts * np.array([1.0, -1.0, -1.0])
    assert hypervolume(flipped, [MIN, MAX, MAX], [1.1, -1.1, -1.1]) == pytest.approx(base)
    # An accuracy below the floor contributes nothing.
    assert hypervolume(np.array([[0.4, 10.0]]), [MAX, MIN], [0.5, 20.0]) == 0.0


@pytest.mark.parametrize("d", [2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion(d: int) -> None:
    rng = np.random.default_rng(d)
    for _ in range(15):
        n = int(rng.integers(1, 8))
        pts = rng.integers(0, 5, size=(n, d)).astype(float)  # integer grid: many ties
        ref = np.full(d, 4.0)
        assert hypervolume(pts, [MIN] * d, ref) == pytest.approx(_box_union_volume(pts, ref))


def test_hypervolume_monte_carlo_3d() -> None:
    rng = np.random.default_rng(2)
    for _ in range(3):
        # Points near the sphere |x| = 1 in the positive octant: a curved 3-D front.
        pts = np.abs(rng.normal(size=(40, 3)))
        pts /= np.linalg.norm(pts, axis=1, keepdims=True)
        ref = np.array([1.2, 1.2, 1.2])
        exact = hypervolume(pts, [MIN] * 3, ref)
        samples = rng.uniform(0.0, 1.2, size=(100_000, 3))
        hit = np.zeros(len(samples), dtype=bool)
        for p in pts:
            hit |= (samples >= p).all(axis=1)
        estimate = hit.mean() * 1.2**3
        assert exact == pytest.approx(estimate, abs=0.01)  # ~4 standard errors


# ---- default_reference --------------------------------------------------------------


def test_default_reference_pushes_nadir_out() -> None:
    pts = np.array([[1.0, 10.0], [3.0, 0.0]])
    ref = default_reference(pts, [MIN, MAX], margin=0.1)
    assert ref == pytest.approx([3.0 + 0.2, 0.0 - 1.0])
    assert hypervolume(pts, [MIN, MAX], ref) > 0
    # A constant objective still gets a strictly worse reference.
    assert default_reference(np.array([[5.0, 1.0], [5.0, 2.0]]), [MIN, MIN]) == pytest.approx([5.5, 2.1])


# ---- knee_point ---------------------------------------------------------------------


def test_knee_on_l_shaped_front() -> None:
    front = np.array([[0.0, 10.0], [0.2, 6.0], [6.0, 0.2], [1.0, 1.0], [10.0, 0.0]])
    assert knee_point(front, [MIN, MIN]) == 3
    # Dominated points are ignored; maximised columns are handled by sign.
    with_dominated = np.vstack([front, [[2.0, 2.0], [1.5, 1.0]]])
    assert knee_point(with_dominated, [MIN, MIN]) == 3
    assert knee_point(front * np.array([1.0, -1.0]), [MIN, MAX]) == 3


def test_knee_2d_uses_chord_distance_not_euclidean() -> None:
    # Normalised already. Distances to the chord x + y = 1: (1 - x - y) / sqrt(2),
    # largest for (0.1, 0.8) (0.1 vs 0.05), whereas (0.5, 0.45) is nearer the origin.
    front = np.array([[0.0, 1.0], [0.5, 0.45], [0.1, 0.8], [1.0, 0.0]])
    assert knee_point(front, [MIN, MIN]) == 2


def test_knee_3d_nearest_ideal() -> None:
    front = np.array(
        [[0.0, 0.0, 10.0], [0.0, 10.0, 0.0], [10.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 5.0, 5.0]]
    )
    assert knee_point(front, [MIN, MIN, MIN]) == 3
    assert knee_point(-front, [MAX, MAX, MAX]) == 3


# ---- top_k_along_front --------------------------------------------------------------


def test_top_k_extremes_then_spread() -> None:
    x = np.linspace(0.0, 1.0, 11)
    line = np.stack([x, 1.0 - x], axis=1)  # a linear front, x = 0, 0.1, ..., 1
    dominated = np.array([[0.6, 0.6], [0.9, 0.9]])
    pts = np.vstack([dominated, line])
    picks = top_k_along_front(pts, [MIN, MIN], 3)
    assert picks == [2, 12, 7]  # best x (0, 1), best y (1, 0), then the middle (0.5, 0.5)
    assert top_k_along_front(pts, [MIN, MIN], 1) == [2]
    assert top_k_along_front(pts, [MIN, MIN], 0) == []
    # Maximising: the front is (0.9, 0.9) and the two ends; (1, 0) is best in x.
    assert top_k_along_front(pts, [MAX, MAX], 1) == [12]
    assert sorted(top_k_along_front(pts, [MAX, MAX], 5)) == [1, 2, 12]
    many = top_k_along_front(pts, [MIN, MIN], 50)
    assert sorted(many) == list(range(2, 13))  # the whole front, no dominated point


def test_top_k_spreads_better_than_neighbours() -> None:
    # A dense cluster near one end of the front and a sparse tail: picks cover both.
    x = np.concatenate([np.linspace(0.0, 0.1, 20), [0.5, 1.0]])
    pts = np.stack([x, 1.0 - x], axis=1)
    picks = top_k_along_front(pts, [MIN, MIN], 3)
    assert set(picks) == {0, 20, 21}


def test_top_k_picks_identical_points_once() -> None:
    pts = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert top_k_along_front(pts, [MIN, MIN], 3) == [0, 2]


def test_experiment_reference_from_stated_values_budgets_and_floors():
    from dime_nas.metrics import Budget
    from dime_nas.search.pareto import experiment_reference

    b = [Budget.parse("latency_ms <= 8"), Budget.parse("latency_ms <= 5"), Budget.parse("accuracy >= 0.4")]
    ref, rule = experiment_reference(["accuracy", "latency_ms"], ["maximize", "minimize"], b)
    assert ref == [0.4, 8.0] and "budget" in rule  # the loosest bound of each
    ref, _ = experiment_reference(["accuracy", "latency_ms"], ["maximize", "minimize"], [], {"latency_ms": 3})
    assert ref == [0.0, 3.0]
    ref, why = experiment_reference(["accuracy", "gmacs"], ["maximize", "minimize"], [])
    assert ref is None and "gmacs" in why
