"""DIME-FM losses against values from the authors' released code and hand-written numpy references."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dime_nas.config import LossConfig
from dime_nas.distill.losses import (
    NonFiniteLossError,
    check_finite,
    dime_fm_losses,
    feature_distill_loss,
)


# ---- hand-written reference: explicit loops over rows ------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).sum(axis=1, keepdims=True))


def _logits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 100.0 * _unit(a) @ _unit(b).T


def _softmax_row(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def _kl(teacher: np.ndarray, student: np.ndarray, temp: float) -> float:
    """KL(teacher || student) of row softmaxes at temperature, mean over rows."""
    total = 0.0
    for t_row, s_row in zip(teacher, student):
        p = _softmax_row(t_row / temp)
        q = _softmax_row(s_row / temp)
        total += sum(pj * (math.log(pj) - math.log(qj)) for pj, qj in zip(p, q) if pj > 0)
    return total / len(teacher)


def _reference(s_i, t_i, t_t, s_t=None, t_vl=1.0, t_pvl=3.0, t_udist=7.0) -> dict[str, float]:
    ref = {
        "vl": _kl(_logits(t_i, t_t), _logits(s_i, t_t), t_vl) + _kl(_logits(t_t, t_i), _logits(t_t, s_i), t_vl),
        "pvl": 2 * _kl(_logits(t_i, t_i), _logits(s_i, t_i), t_pvl),
        "udist": 2 * _kl(_logits(t_i, t_i), _logits(s_i, s_i), t_udist),
    }
    if s_t is not None:
        ref["text_vl"] = _kl(_logits(t_t, t_i), _logits(s_t, t_i), t_vl) + _kl(
            _logits(t_i, t_t), _logits(t_i, s_t), t_vl
        )
        ref["text_pvl"] = 2 * _kl(_logits(t_t, t_t), _logits(s_t, t_t), t_pvl)
    return ref


def _batch(seed: int, n_img: int = 5, n_txt: int = 3, dim: int = 4, scale: float = 0.05):
    """Embeddings clustered around one direction so that the softmaxes (scale 100)
    stay soft; the student is a perturbed teacher."""
    g = np.random.default_rng(seed)
    centre = np.ones(dim)
    t_i = centre + 0.1 * g.normal(size=(n_img, dim))
    t_t = centre + 0.1 * g.normal(size=(n_txt, dim))
    s_i = t_i + scale * g.normal(size=(n_img, dim))
    s_t = t_t + scale * g.normal(size=(n_txt, dim))
    return s_i, t_i, t_t, s_t


def _t(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


# ---- the authors' released implementation -------------------------------------------
# tests/data/dime_fm_reference.json: values computed by get_loss of github.com/sunxm2357/DIME-FM
# (Training/utils/utils.py), run unmodified by tests/data/make_dime_fm_reference.py.

AUTHORS = json.loads((Path(__file__).parent / "data" / "dime_fm_reference.json").read_text())


@pytest.mark.parametrize("case", AUTHORS["cases"], ids=lambda c: f"{c['inputs']}-{c['setting']}")
def test_losses_match_the_authors_released_get_loss(case) -> None:
    x = {k: torch.tensor(v, dtype=torch.float64) for k, v in AUTHORS["inputs"][case["inputs"]].items()}
    a = case["args"]
    out = dime_fm_losses(x["student_image"], x["teacher_image"], x["teacher_text"], w_vl=a["w_vl_loss"],
                         w_pvl=a["w_pvl_loss"], w_udist=a["w_udist_loss"], t_vl=a["t_vl"], t_pvl=a["t_pvl"],
                         t_udist=a["t_udist"])
    want = case["expected"]
    terms = ["total", "vl"] + ["pvl"] * a["use_pvl_loss"] + ["udist"] * a["use_udist_loss"]  # the ones it computed
    for term in terms:
        assert float(out[term]) == pytest.approx(want[term], rel=1e-9, abs=1e-12), term
    if case["setting"] == "readme":  # the authors' defaults are the function's
        plain = dime_fm_losses(x["student_image"], x["teacher_image"], x["teacher_text"])
        assert float(plain["total"]) == pytest.approx(want["total"], rel=1e-9, abs=1e-12)


def test_the_authors_defaults_are_the_config_defaults() -> None:
    """The README's training command: the loss settings at the authors' defaults are ours."""
    readme = next(c for c in AUTHORS["cases"] if c["setting"] == "readme")["args"]
    ours = LossConfig()
    assert (ours.w_vl, ours.w_pvl, ours.w_udist) == (readme["w_vl_loss"], readme["w_pvl_loss"], readme["w_udist_loss"])
    assert (ours.t_vl, ours.t_pvl, ours.t_udist) == (readme["t_vl"], readme["t_pvl"], readme["t_udist"])


# ---- tests --------------------------------------------------------------------------


@pytest.mark.parametrize("n_img,n_txt", [(5, 3), (2, 7), (4, 4)])
def test_terms_match_reference_with_unequal_batches(n_img: int, n_txt: int) -> None:
    s_i, t_i, t_t, s_t = _batch(0, n_img, n_txt)
    out = dime_fm_losses(_t(s_i), _t(t_i), _t(t_t), _t(s_t))
    ref = _reference(s_i, t_i, t_t, s_t)
    for key, value in ref.items():
        assert value > 1e-6, key  # the check below is not vacuous
        assert out[key].item() == pytest.approx(value, rel=1e-7, abs=1e-12), key


def test_default_total_is_weighted_sum() -> None:
    s_i, t_i, t_t, s_t = _batch(1)
    ref = _reference(s_i, t_i, t_t, s_t)
    out = dime_fm_losses(_t(s_i), _t(t_i), _t(t_t))
    assert set(out) == {"vl", "pvl", "udist", "total"}
    assert out["total"].item() == pytest.approx(0.7 * ref["vl"] + 0.3 * ref["pvl"])
    out = dime_fm_losses(_t(s_i), _t(t_i), _t(t_t), _t(s_t))
    assert set(out) == {"vl", "pvl", "udist", "text_vl", "text_pvl", "total"}
    expected = 0.7 * ref["vl"] + 0.3 * ref["pvl"] + 0.7 * ref["text_vl"] + 0.3 * ref["text_pvl"]
    assert out["total"].item() == pytest.approx(expected)


def test_weights_and_temperatures_configurable() -> None:
    s_i, t_i, t_t, s_t = _batch(2)
    temps = dict(t_vl=2.0, t_pvl=0.5, t_udist=4.0)
    ref = _reference(s_i, t_i, t_t, s_t, **temps)
    out = dime_fm_losses(
        _t(s_i), _t(t_i), _t(t_t), _t(s_t),
        w_vl=0.1, w_pvl=0.2, w_udist=0.3, w_text_vl=0.4, w_text_pvl=0.5, **temps,
    )
    for key in ref:
        assert out[key].item() == pytest.approx(ref[key]), key
    expected = 0.1 * ref["vl"] + 0.2 * ref["pvl"] + 0.3 * ref["udist"] + 0.4 * ref["text_vl"] + 0.5 * ref["text_pvl"]
    assert out["total"].item() == pytest.approx(expected)
    # The temperature matters: the default temperatures give other values.
    default = dime_fm_losses(_t(s_i), _t(t_i), _t(t_t))
    assert default["pvl"].item() != pytest.approx(ref["pvl"])


def test_kl_direction_is_teacher_to_student() -> None:
    s_i, t_i, t_t, _ = _batch(3, scale=0.3)
    out = dime_fm_losses(_t(s_i), _t(t_i), _t(t_t))
    # KL is asymmetric: the swapped direction gives a different number.
    swapped = 2 * _kl(_logits(s_i, t_i), _logits(t_i, t_i), 3.0)
    expected = 2 * _kl(_logits(t_i, t_i), _logits(s_i, t_i), 3.0)
    assert abs(swapped - expected) > 1e-3 * expected
    assert out["pvl"].item() == pytest.approx(expected)


def test_factor_two_on_structure_terms() -> None:
    s_i, t_i, t_t, s_t = _batch(4)
    out = dime_fm_losses(_t(s_i), _t(t_i), _t(t_t), _t(s_t))
    assert out["pvl"].item() == pytest.approx(2 * _kl(_logits(t_i, t_i), _logits(s_i, t_i), 3.0))
    assert out["udist"].item() == pytest.approx(2 * _kl(_logits(t_i, t_i), _logits(s_i, s_i), 7.0))
    assert out["text_pvl"].item() == pytest.approx(2 * _kl(_logits(t_t, t_t), _logits(s_t, t_t), 3.0))


def test_zero_loss_when_student_equals_teacher_up_to_scale() -> None:
    _, t_i, t_t, _ = _batch(5)
    # Scaling must not matter: the function normalises.
    out = dime_fm_losses(_t(3.0 * t_i), _t(t_i), _t(t_t), _t(0.5 * t_t), w_udist=1.0)
    for key, value in out.items():
        assert abs(value.item()) < 1e-10, key


def test_gradient_reaches_only_the_student() -> None:
    s_i, t_i, t_t, s_t = _batch(6)
    student_i, student_t = _t(s_i, grad=True), _t(s_t, grad=True)
    teacher_i, teacher_t = _t(t_i, grad=True), _t(t_t, grad=True)
    out = dime_fm_losses(student_i, teacher_i, teacher_t, student_t, w_udist=1.0)
    out["total"].backward()
    assert teacher_i.grad is None and teacher_t.grad is None
    assert student_i.grad is not None and student_i.grad.abs().sum() > 0
    assert student_t.grad is not None and student_t.grad.abs().sum() > 0


def test_udist_gradient_flows_through_both_sides_of_student_similarity() -> None:
    s_i, t_i, t_t, _ = _batch(7)
    student = _t(s_i, grad=True)
    out = dime_fm_losses(student, _t(t_i), _t(t_t), w_vl=0.0, w_pvl=0.0, w_udist=1.0)
    out["total"].backward()
    # Finite-difference check of d udist / d student[0, 0].
    eps = 1e-6
    plus, minus = s_i.copy(), s_i.copy()
    plus[0, 0] += eps
    minus[0, 0] -= eps
    fd = (_reference(plus, t_i, t_t)["udist"] - _reference(minus, t_i, t_t)["udist"]) / (2 * eps)
    assert student.grad[0, 0].item() == pytest.approx(fd, rel=1e-4, abs=1e-9)


def test_feature_distill_loss() -> None:
    s = np.array([[1.0, 0.0], [0.0, 2.0]])
    t = np.array([[0.0, 3.0], [0.0, 1.0]])  # first row orthogonal, second identical
    cos = feature_distill_loss(_t(s), _t(t), kind="cosine")
    assert set(cos) == {"cosine", "total"}
    assert cos["total"].item() == pytest.approx((1.0 + 0.0) / 2)
    mse = feature_distill_loss(_t(s), _t(t), kind="mse")
    assert set(mse) == {"mse", "total"}
    assert mse["total"].item() == pytest.approx((2.0 + 0.0) / 2)  # |e1 - e2|^2 = 2
    student = _t(s, grad=True)
    teacher = _t(t, grad=True)
    feature_distill_loss(student, teacher)["total"].backward()
    assert teacher.grad is None and student.grad is not None
    with pytest.raises(ValueError, match="kind"):
        feature_distill_loss(_t(s), _t(t), kind="l1")


def test_check_finite() -> None:
    check_finite({"vl": torch.tensor(1.0), "total": 2.0}, step=3)
    with pytest.raises(NonFiniteLossError, match=r"step 12.*'pvl'") as info:
        check_finite({"vl": torch.tensor(1.0), "pvl": torch.tensor(float("nan"))}, step=12)
    assert isinstance(info.value, ValueError)
    assert (info.value.step, info.value.term) == (12, "pvl")
    with pytest.raises(NonFiniteLossError, match="inf"):
        check_finite({"total": torch.tensor(float("inf"))}, step=0)


def test_dime_fm_losses_is_importable_from_the_distill_package_as_documented():
    import dime_nas.distill

    assert dime_nas.distill.dime_fm_losses is dime_fm_losses
