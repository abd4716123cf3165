from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from dime_nas.search.stats import (bootstrap_interval, hypervolume_curve, kendall_tau, rank_agreement,
                                   spearman_rho)


def test_tau_hand_checked():
    # pairs of (1,2,3,4) vs (1,3,2,4): 5 concordant, 1 discordant of 6 -> 4/6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_tau_b_with_ties_hand_checked():
    # x = (1,1,2), y = (1,2,3): pairs (0,1) tied in x; (0,2),(1,2) concordant.
    # tau-b = 2 / sqrt((3-1) * 3) = 2 / sqrt(6)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / np.sqrt(6))


def test_rho_hand_checked():
    # ranks (1,2,3,4) vs (1,3,2,4): d^2 sum = 2 -> 1 - 6*2/(4*15) = 0.8
    assert spearman_rho([10, 20, 30, 40], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_agrees_with_scipy_on_ties():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 4, 25).astype(float), rng.integers(0, 5, 25).astype(float)
    assert kendall_tau(x, y) == pytest.approx(sps.kendalltau(x, y).statistic)
    assert spearman_rho(x, y) == pytest.approx(sps.spearmanr(x, y).statistic)


def test_constant_input_is_nan():
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert np.isnan(spearman_rho([1, 2, 3], [5, 5, 5]))


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="equal length"):
        kendall_tau([1, 2, 3], [1, 2])


def test_bootstrap_interval_contains_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(scale=1.0, size=200)
    lo, hi = bootstrap_interval(kendall_tau, x, y)
    assert lo < kendall_tau(x, y) < hi
    lo_s, hi_s = bootstrap_interval(kendall_tau, x[:20], y[:20])
    assert hi - lo < hi_s - lo_s
    # a perfect monotone relation: every resample agrees perfectly
    assert bootstrap_interval(spearman_rho, [1, 2, 3, 4, 5], [2, 4, 6, 8, 10]) == (1.0, 1.0)


def test_rank_agreement_fields():
    out = rank_agreement([1, 2, 3, 4, 5], [1, 2, 3, 5, 4], n_boot=200)
    assert out["tau"] == pytest.approx(0.8) and out["n"] == 5
    assert out["tau_lo"] <= out["tau"] <= out["tau_hi"]


def test_hypervolume_curve_hand_checked():
    # maximise accuracy, minimise latency, reference (acc 0, latency 10)
    pts = np.array([[0.5, 4.0], [0.4, 6.0], [0.8, 8.0], [0.6, 2.0]])
    curve = hypervolume_curve(pts, ["maximize", "minimize"], [0.0, 10.0])
    # 1: 0.5*6 = 3.0; 2: dominated point adds nothing; 3: + (0.8-0.5)*2 = 3.6
    # 4: (0.6 x 8) + (0.8-0.6) x 2 = 4.8 + 0.4 = 5.2
    assert curve == pytest.approx([3.0, 3.0, 3.6, 5.2])
