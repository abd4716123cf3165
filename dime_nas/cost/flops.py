"""Parameters and MACs of a tower, counted with fvcore.

Convention (open_clip's published profile, which uses torch's FlopCounterMode): count
the multiply-accumulates of the linear-algebra ops only — linear/matmul/bmm/einsum,
convolutions and scaled-dot-product attention — per sample (traced at batch 1).
Norms, pooling, activations, softmax and other elementwise ops are not counted.
1 MAC = 2 FLOPs: ``gflops = 2 * gmacs``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

from dime_nas.cost.towers import Tower, tracing_mode

CONVENTION = ("MACs of linear/matmul/conv/einsum/attention ops per sample (batch 1); "
              "norms, pooling, activations and elementwise ops not counted; 1 MAC = 2 FLOPs")

# Ops this convention leaves out on purpose (so they are not reported as uncounted).
_NOT_COUNTED = (
    # fvcore counts these by default; FlopCounterMode (open_clip's profile) does not.
    "aten::batch_norm", "aten::group_norm", "aten::layer_norm", "aten::instance_norm",
    "aten::upsample_nearest2d", "aten::upsample_bilinear2d", "aten::adaptive_avg_pool2d",
    "aten::grid_sampler",
    # Elementwise / data movement / reductions: negligible next to the matmuls.
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_", "aten::div",
    "aten::div_", "aten::neg", "aten::exp", "aten::sqrt", "aten::rsqrt", "aten::pow",
    "aten::gelu", "aten::silu", "aten::silu_", "aten::sigmoid", "aten::hardswish",
    "aten::hardswish_", "aten::hardsigmoid", "aten::tanh", "aten::softmax", "aten::log_softmax",
    "aten::mean", "aten::sum", "aten::norm", "aten::linalg_vector_norm", "aten::max_pool2d",
    "aten::avg_pool2d", "aten::pad", "aten::unflatten", "aten::embedding", "aten::argmax",
    "aten::clone", "aten::fill_", "aten::zeros",
    "aten::zeros_like", "aten::ones_like", "aten::roll", "aten::repeat", "aten::split",
    "aten::unbind", "aten::stack", "aten::type_as",
)
# An op left uncounted whose name contains one of these likely carries real MACs.
_HEAVY_HINTS = ("mm", "conv", "attention", "einsum", "linear", "matmul")


def _shape(value: Any) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``.

    q (..., L, E), k (..., S, E), v (..., S, Ev): Q·Kᵀ costs L·S·E and attn·V costs
    L·S·Ev per batch-head, so MACs = B·H·L·S·(E + Ev).
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    batch_heads = math.prod(q[:-2])
    return batch_heads * q[-2] * k[-2] * (q[-1] + v[-1])


def baddbmm_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::baddbmm`` (bias + batch1 @ batch2): B·N·M·P MACs."""
    b, n, m = _shape(inputs[1])
    return b * n * m * _shape(inputs[2])[-1]


def _counted_handles() -> dict[str, Any]:
    """The ops that carry MACs under this convention, and how to count each."""
    from fvcore.nn import jit_handles as h

    return {
        "aten::addmm": h.addmm_flop_jit,
        "aten::bmm": h.bmm_flop_jit,
        "aten::baddbmm": baddbmm_macs,
        "aten::_convolution": h.conv_flop_jit,
        "aten::einsum": h.einsum_flop_jit,
        "aten::matmul": h.matmul_flop_jit,
        "aten::mm": h.matmul_flop_jit,
        "aten::linear": h.linear_flop_jit,
        "aten::scaled_dot_product_attention": sdpa_macs,
    }


def count_params(tower: Tower) -> int:
    """Number of parameters of the tower (shared tensors counted once)."""
    return sum(p.numel() for p in tower.module.parameters())


def count_macs(tower: Tower) -> tuple[int, dict[str, int], dict[str, int]]:
    """MACs of one forward pass at batch 1.

    Returns:
        (macs, macs_by_operator, uncounted_ops): the total, its split by fvcore operator
        kind, and any ops neither counted nor known to be negligible (op -> calls).
    """
    from fvcore.nn import FlopCountAnalysis

    module, x = tower.module, tower.example_input(1)
    with tracing_mode(module), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation noise
        analysis = FlopCountAnalysis(module, x).clear_op_handles()
        analysis.set_op_handle(**_counted_handles())
        analysis.set_op_handle(**{name: None for name in _NOT_COUNTED})
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = int(analysis.total())
        by_op = {k: int(v) for k, v in analysis.by_operator().items() if v}
        uncounted = dict(analysis.unsupported_ops())
    heavy = [op for op in uncounted if any(h in op for h in _HEAVY_HINTS)]
    if heavy:
        warnings.warn(f"{tower.name} tower: MACs of {', '.join(heavy)} are not counted", stacklevel=2)
    return total, by_op, uncounted


def tower_cost(tower: Tower) -> dict[str, Any]:
    """Params and MACs of one tower, with the counting convention spelled out."""
    macs, by_op, uncounted = count_macs(tower)
    return {
        "tower": tower.name,
        "params": count_params(tower),
        "macs": macs,
        "gmacs": macs / 1e9,
        "gflops": 2 * macs / 1e9,
        "macs_by_operator": by_op,
        "uncounted_ops": uncounted,
        "input_shape": [1, *tower.input_shape],
        "input_dtype": str(tower.input_dtype).removeprefix("torch."),
        "batch": 1,
        "convention": CONVENTION,
    }


def model_cost(towers: dict[str, Tower]) -> dict[str, Any]:
    """``tower_cost`` for every tower, plus totals over them."""
    per_tower = {name: tower_cost(t) for name, t in towers.items()}
    macs = sum(c["macs"] for c in per_tower.values())
    return {
        "towers": per_tower,
        "params": sum(c["params"] for c in per_tower.values()),
        "macs": macs,
        "gmacs": macs / 1e9,
        "gflops": 2 * macs / 1e9,
        "batch": 1,
        "convention": CONVENTION,
    }
