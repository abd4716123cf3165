"""The evidence's statistics on hand-checked cases (experiments/benchmarks/bench_stats.py,
fidelity_report.py): within-family rank agreement, the zero-cost family rules, the multi-seed
ceiling, and the one-sided permutation test of a sampler against random."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))

import bench_stats  # noqa: E402
import fidelity_report  # noqa: E402
from dime_nas.search.stats import kendall_tau  # noqa: E402

RULE, RULE_TEXT = bench_stats.FAMILY_RULES


def test_family_rules_hand_checked():
    rules = bench_stats.family_rules(["vit", "vit", "timm", "timm"], ["teacher", "transformer", "teacher", "transformer"])
    assert rules[RULE].tolist() == [0, 0, 1, 1]
    assert rules[RULE_TEXT].tolist() == [0, -1, 2, 1]  # family first, then the teacher's text above one's own
    # against truth 1 < 2 < 3 < 4 the family rule has 4 concordant pairs, 2 tied in x: tau-b 4 / sqrt(4 * 6)
    assert kendall_tau(rules[RULE], [1, 2, 3, 4]) == pytest.approx(4 / math.sqrt(24))


def test_family_rules_reproduce_the_figures_on_the_first_18_students():
    """The 18 students of proxy_fidelity.json: 'convnet above ViT' ranks them at tau 0.709, with
    'own text tower below' at 0.797 (the figures that showed tau was mostly family separation)."""
    students = json.loads((ROOT / "experiments" / "results" / "proxy_fidelity.json").read_text())["students"]
    rules = bench_stats.family_rules([s["family"] for s in students], [s["text"] for s in students])
    full = [s["full"] for s in students]
    assert kendall_tau(rules[RULE], full) == pytest.approx(0.709, abs=5e-4)
    assert kendall_tau(rules[RULE_TEXT], full) == pytest.approx(0.797, abs=5e-4)


def test_group_agreement_hand_checked():
    x = [1, 2, 3, 4, 5, 6]
    y = [1, 2, 3, 6, 5, 4]  # right within the first three, reversed within the last three
    groups = {"all": [True] * 6, "first": [True] * 3 + [False] * 3, "last": [False] * 3 + [True] * 3,
              "two": [True, True] + [False] * 4}
    out = bench_stats.group_agreement(kendall_tau, x, y, groups, n_boot=200)
    assert out["first"]["value"] == 1.0 and out["first"]["n"] == 3
    assert out["last"]["value"] == -1.0
    # all 15 pairs: 3 discordant (the reversed three), 12 concordant -> (12 - 3) / 15
    assert out["all"]["value"] == pytest.approx(9 / 15)
    assert out["all"]["lo"] <= out["all"]["value"] <= out["all"]["hi"]
    assert out["two"] is None  # too few to rank
    constant = bench_stats.group_agreement(kendall_tau, [0, 0, 0, 1, 1, 1], y, groups, n_boot=50)
    assert constant["first"] is None and constant["all"] is not None  # a rule that ties a whole group


def test_group_differences_hand_checked():
    y = [1, 2, 3, 4, 5, 6]
    proxy = [1, 2, 3, 4, 5, 6]
    swapped = [2, 1, 3, 4, 6, 5]  # one discordant pair in each half
    rule = [0, 0, 0, 1, 1, 1]
    groups = {"all": [True] * 6, "first": [True] * 3 + [False] * 3}
    out = bench_stats.group_differences(kendall_tau, proxy, swapped, y, groups, n_boot=200)
    assert out["first"]["diff"] == pytest.approx(1 - 1 / 3)  # tau 1 against (2 - 1) / 3
    assert out["all"]["diff"] == pytest.approx(1 - 11 / 15)  # swapped: 13 concordant, 2 discordant
    assert out["all"]["lo"] >= 0  # the proxy is never below on a resample
    vs_rule = bench_stats.group_differences(kendall_tau, proxy, rule, y, groups, n_boot=200)
    assert vs_rule["first"] is None  # the rule ties the whole group: nothing to compare within it
    assert vs_rule["all"]["diff"] == pytest.approx(1 - 9 / math.sqrt(9 * 15))


def _record(family, text, proxy, full):
    return {"arch_key": f"{family}{text}{proxy}", "describe": f"{family} {text} {proxy}", "family": family,
            "text_kind": text, "proxy": {"lr 0.002": proxy}, "proxy_image": {"lr 0.002": proxy},
            "agreement_short": {"lr 0.002": proxy[0]}, "loss_step20": {"lr 0.002": 1.0 - proxy[0]},
            "short_train_s": {"lr 0.002": [1.0] * len(proxy)}, "image_mmacs": 1.0, "image_params_m": 0.1,
            "full": full, "long_train_s": [10.0] * len(full)}


def test_report_within_families_baselines_and_ceiling():
    """Six students, two long seeds: the truth is the seeds' mean, the ceiling their agreement."""
    records = [  # ViTs: the proxy ranks them right; convnets: exactly reversed
        _record("vit", "teacher", [0.10, 0.12], [0.50, 0.52]),
        _record("vit", "transformer", [0.20, 0.22], [0.60, 0.58]),
        _record("vit", "teacher", [0.30, 0.32], [0.70, 0.75]),
        _record("timm", "transformer", [0.90, 0.92], [0.80, 0.79]),
        _record("timm", "teacher", [0.80, 0.82], [0.85, 0.90]),
        _record("timm", "transformer", [0.70, 0.72], [0.95, 0.92]),
    ]
    setup = {"students_file": "list.txt", "registered_in_commit": "0" * 40, "short_steps": 240, "batch": 64,
             "text_tower_step_scale": 2.0, "short_seeds": [0, 1], "long_seeds": [100, 101], "long_steps": 2400,
             "candidates": {"lr 0.002": {"lr": 0.002}}, "workers": 2, "threads": 1}
    machine = {"cpu": "cpu", "cores": 2, "load_avg": [1.0], "torch": "x"}
    data, md = fidelity_report.report(records, setup, machine, n_boot=100)
    agree = data["candidates"]["lr 0.002"]["agreement"]
    assert agree[fidelity_report.PROXY]["ViT"]["value"] == 1.0
    assert agree[fidelity_report.PROXY]["convnet"]["value"] == -1.0
    # overall: 3 ViT pairs and 9 cross pairs concordant, 3 convnet pairs discordant -> (12 - 3) / 15
    assert agree[fidelity_report.PROXY]["all"]["value"] == pytest.approx(9 / 15)
    assert agree[RULE]["ViT"] is None and agree[RULE]["all"]["value"] == pytest.approx(9 / math.sqrt(9 * 15))
    # the ceiling: seed 100 [0.50 0.60 0.70 0.80 0.85 0.95] against seed 101 [0.52 0.58 0.75 0.79 0.90 0.92]
    ceiling = data["ceiling_truth_seed_vs_seed_tau"]
    assert ceiling["all"]["mean"] == 1.0 and ceiling["ViT"]["mean"] == 1.0
    targets = data["candidates"]["lr 0.002"]["targets"]
    assert targets["tau >= 0.7 in ViT"]["met"] and not targets["tau >= 0.7 in convnet"]["met"]
    assert targets["tau >= 0.7 in convnet"]["short_by"] == pytest.approx(1.7)
    assert "| ceiling: the truth's seeds against each other (mean over pairs) | 1.00 | 1.00 | 1.00 |" in md
    assert np.isclose(data["truth_seed_std_pooled"], bench_stats.pooled_std([r["full"] for r in records]))


def test_ceiling_falls_with_disagreeing_seeds():
    records = [_record("vit", "teacher", [0.1 * i, 0.1 * i], full) for i, full in
               enumerate([[1, 1], [2, 3], [3, 2], [4, 4]], 1)]
    setup = {"students_file": "l", "short_steps": 1, "batch": 1, "text_tower_step_scale": 1.0, "short_seeds": [0, 1],
             "long_seeds": [100, 101], "long_steps": 10, "candidates": {"lr 0.002": {"lr": 0.002}}, "workers": 1,
             "threads": 1}
    data, _ = fidelity_report.report(records, setup, {"cpu": "", "cores": 1, "load_avg": [0.0], "torch": ""}, n_boot=50)
    assert data["ceiling_truth_seed_vs_seed_tau"]["all"]["mean"] == pytest.approx(4 / 6)  # one swapped pair of six


def test_permutation_test_hand_checked():
    # a = [3, 4] over b = [1, 2]: of the 6 ways to split {1, 2, 3, 4} in two, only the observed one
    # has a difference of means as large (+2): p = 1/6
    assert bench_stats.permutation_p_greater([3, 4], [1, 2]) == pytest.approx(1 / 6)
    # reversed: every split is at least as large as -2
    assert bench_stats.permutation_p_greater([1, 2], [3, 4]) == 1.0
    # identical samples: every split gives 0 >= 0
    assert bench_stats.permutation_p_greater([1, 1, 1], [1, 1, 1]) == 1.0
    # 10 seeds each, clearly apart: the exact test gives 1 / C(20, 10)
    assert bench_stats.permutation_p_greater(np.arange(10) + 100, np.arange(10)) == pytest.approx(1 / 184756)
    # the Monte Carlo estimate of a many-split case agrees with the exact one
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 1, 8), rng.normal(0, 1, 8)
    exact = bench_stats.permutation_p_greater(a, b)
    assert bench_stats.permutation_p_greater(a, b, n_resamples=5000) == pytest.approx(exact, abs=0.02)
