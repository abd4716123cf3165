"""The benchmark reports' statistics (experiments/benchmarks/bench_stats.py) on hand-checked cases."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments" / "benchmarks"))

import bench_stats  # noqa: E402
from dime_nas.search.stats import kendall_tau, spearman_rho  # noqa: E402


def test_paired_difference_hand_checked():
    y = [1, 2, 3, 4]
    a = [1, 2, 3, 4]  # tau 1
    b = [1, 3, 2, 4]  # tau 4/6: students 1 and 2 swapped
    out = bench_stats.paired_difference_interval(kendall_tau, a, b, y, n_boot=2000)
    assert out["diff"] == pytest.approx(1 - 4 / 6)
    # The exact bootstrap distribution: all 4^4 resamples are equally likely. Paired, a never
    # loses to b (diff >= 0), and diff is 0 unless both swapped students are drawn.
    exact = []
    for k in itertools.product(range(4), repeat=4):
        pick = list(k)
        d = kendall_tau(np.take(a, pick), np.take(y, pick)) - kendall_tau(np.take(b, pick), np.take(y, pick))
        if not np.isnan(d):
            exact.append(d)
    exact = np.array(exact)
    assert len(exact) == 252 and exact.min() == 0.0
    # 14 of 252 resamples (5.6% > 2.5%) hold only the swapped pair, where b ranks exactly backwards:
    # the 97.5% point is diff 2; more than 2.5% are 0, so the 2.5% point is 0
    assert np.mean(exact == 2.0) == pytest.approx(14 / 252) and np.mean(exact == 0.0) == pytest.approx(142 / 252)
    assert out["lo"] == 0.0 and out["hi"] == 2.0
    # the share of resamples where a does not beat b, within 4 binomial standard errors of 142/252
    p = 142 / 252
    assert out["p_not_above"] == pytest.approx(p, abs=4 * (p * (1 - p) / 2000) ** 0.5)


def test_paired_difference_of_a_predictor_with_itself_is_zero():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=12), rng.normal(size=12)
    out = bench_stats.paired_difference_interval(spearman_rho, x, x, y, n_boot=200)
    assert out["diff"] == 0.0 and out["lo"] == 0.0 and out["hi"] == 0.0
    assert out["p_not_above"] == 1.0  # "not above" includes ties


def test_paired_difference_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="equal length"):
        bench_stats.paired_difference_interval(kendall_tau, [1, 2, 3], [1, 2, 3], [1, 2])


def test_seed_agreement_hand_checked():
    # three seeds of four students: seeds 0 and 1 agree fully (tau 1); seed 2 swaps the middle pair
    # (tau 4/6 against each of the others) -> mean (1 + 4/6 + 4/6) / 3
    m = np.array([[1, 1, 1], [2, 2, 3], [3, 3, 2], [4, 4, 4]], dtype=float)
    out = bench_stats.seed_agreement(kendall_tau, m)
    assert out["pairs"] == 3
    assert out["mean"] == pytest.approx((1 + 4 / 6 + 4 / 6) / 3)
    assert out["min"] == pytest.approx(4 / 6) and out["max"] == pytest.approx(1.0)


def test_pooled_std_hand_checked():
    # row std (ddof 1): [1, 3] -> sqrt(2); [5, 5] -> 0; RMS = sqrt((2 + 0) / 2) = 1
    assert bench_stats.pooled_std([[1, 3], [5, 5]]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bench_stats.pooled_std([[1], [2]])


def test_ratio_at_and_trials_to_reach_hand_checked():
    curves = [[1.0, 2.0, 4.0], [2.0, 3.0, 3.0]]
    out = bench_stats.ratio_at(curves, 4.0, 2)  # column 2: 2/4 and 3/4
    assert out["mean"] == pytest.approx(0.625) and out["min"] == 0.5 and out["max"] == 0.75
    assert out["std"] == pytest.approx(np.std([0.5, 0.75], ddof=1))
    assert bench_stats.trials_to_reach([1.0, 2.0, 3.8, 4.0], 4.0, 0.95) == 3  # 3.8 / 4 = 0.95 exactly
    assert bench_stats.trials_to_reach([1.0, 2.0], 4.0, 0.95) is None
    with pytest.raises(ValueError):
        bench_stats.ratio_at(curves, 4.0, 4)


def test_replay_counts_distinct_architectures_and_ends_at_the_exhaustive_hypervolume():
    import search_efficiency

    from dime_nas.search.pareto import default_reference, hypervolume
    from dime_nas.space import SearchSpace

    space = SearchSpace({"name": "t", "embed_dim": 16, "image": {"kind": ["vit"], "vit": {
        "layers": {"low": 1, "high": 2}, "width": [32, 64], "heads": [2], "mlp_ratio": [2.0], "patch_size": [8],
        "image_size": [32]}}, "text": {"kind": ["teacher"]}})
    grid = space.grid(embed_dim=16)
    table = {s.arch_key: (0.1 * s.vision.layers + 0.001 * s.vision.width, s.vision.layers * s.vision.width)
             for s in grid}
    points = np.array(list(table.values()))
    ref = default_reference(points, search_efficiency.DIRECTIONS)
    out = search_efficiency.replay(space, 16, table, "random", 0, ref)
    assert len(out["keys"]) == len(set(out["keys"])) == 4 and not out["capped"]
    assert out["raw_trials"] >= 4  # repeats are asked but not counted
    assert np.all(np.diff(out["hv"]) >= 0)
    assert out["hv"][-1] == pytest.approx(hypervolume(points, search_efficiency.DIRECTIONS, ref))
