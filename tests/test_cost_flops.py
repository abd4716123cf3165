"""Towers, params and MACs: hand-computed toy modules, open_clip's published profile,
timm towers cross-checked against torch's FlopCounterMode."""
from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dime_nas.cost.flops import count_macs, count_params, model_cost, tower_cost
from dime_nas.cost.towers import Tower, resolve_model, towers_from_open_clip, towers_from_student, tracing_mode
from dime_nas.student import StudentConfig, TextTowerConfig, VisionTowerConfig


def _tower(module: nn.Module, shape: tuple[int, ...]) -> Tower:
    return Tower("image", module, lambda b: torch.randn(b, *shape))


# ---- toy modules, MACs computed by hand -------------------------------------------------------

def test_linear_macs_exclude_bias():
    # 3 tokens x 7 in x 5 out; the bias adds are not MACs
    cost = tower_cost(_tower(nn.Linear(7, 5), (3, 7)))
    assert cost["macs"] == 3 * 7 * 5
    assert cost["gflops"] == pytest.approx(2 * cost["gmacs"])
    assert cost["params"] == 7 * 5 + 5
    assert cost["batch"] == 1 and cost["input_shape"] == [1, 3, 7]


def test_conv_macs_dense_and_depthwise():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8))
    macs, by_op, uncounted = count_macs(_tower(net, (3, 16, 16)))
    dense = (16 * 16 * 8) * (3 * 3 * 3)  # output positions x channels, times kernel x in-channels
    depthwise = (16 * 16 * 8) * (3 * 3)  # one input channel per group
    assert macs == dense + depthwise  # batch norm is not counted (fused at inference)
    assert set(by_op) == {"conv"} and uncounted == {}


class _MHABlock(nn.Module):
    """Self-attention through nn.MultiheadAttention, as open_clip's ViT blocks do."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_multihead_attention_macs_despite_fast_path():
    # L = 10 tokens, width 32, 4 heads of 8
    assert torch.backends.mha.get_fastpath_enabled()
    macs, by_op, _ = count_macs(_tower(_MHABlock(), (10, 32)))
    in_proj = 10 * 32 * (3 * 32)
    attention = 4 * 10 * 10 * (8 + 8)  # B*H*L*S*(E + Ev): q.k^T then attn.v
    out_proj = 10 * 32 * 32
    assert macs == in_proj + attention + out_proj
    assert by_op["scaled_dot_product_attention"] == attention
    assert torch.backends.mha.get_fastpath_enabled()  # restored


class _CrossSDPA(nn.Module):
    """F.scaled_dot_product_attention with L != S and E != Ev (queries attend to a memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.memory = nn.Parameter(torch.randn(9, 16))  # S = 9
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], 2
        mem = self.memory.expand(b, -1, -1)
        q = self.q(x).view(b, -1, n, 8).transpose(1, 2)  # (B, 2, 6, 8)
        k = self.k(mem).view(b, -1, n, 8).transpose(1, 2)  # (B, 2, 9, 8)
        v = self.v(mem).view(b, -1, n, 12).transpose(1, 2)  # (B, 2, 9, 12)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, 24)


def test_sdpa_macs_cross_attention():
    macs, by_op, uncounted = count_macs(_tower(_CrossSDPA(), (6, 16)))
    projections = 6 * 16 * 16 + 9 * 16 * 16 + 9 * 16 * 24
    attention = 2 * 6 * 9 * (8 + 12)  # B*H*L*S*(E + Ev)
    assert by_op["scaled_dot_product_attention"] == attention
    assert macs == projections + attention
    assert uncounted == {}


def test_state_restored_when_forward_fails():
    class Broken(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    module = Broken(4, 4).train()
    with pytest.raises(RuntimeError, match="boom"):
        count_macs(_tower(module, (4,)))
    assert torch.backends.mha.get_fastpath_enabled()
    assert module.training and torch.is_grad_enabled()


def test_counting_is_quiet(capfd, caplog):
    with caplog.at_level(logging.DEBUG):
        count_macs(_tower(_MHABlock(), (10, 32)))
    captured = capfd.readouterr()
    noise = captured.out + captured.err + caplog.text
    assert "unsupported" not in noise.lower() and "not supported" not in noise.lower()


# ---- student towers ---------------------------------------------------------------------------

TINY = StudentConfig(
    embed_dim=64,
    vision=VisionTowerConfig(kind="vit", image_size=32, layers=2, width=32, heads=2, mlp_ratio=2.0, patch_size=8),
    text=TextTowerConfig(kind="transformer", layers=1, width=32, heads=2, context_length=16),
)


def test_student_towers_shapes_params_and_macs():
    towers = towers_from_student(TINY)
    assert set(towers) == {"image", "text"}
    image, text = towers["image"], towers["text"]
    assert image.example_input(3).shape == (3, 3, 32, 32)
    tokens = text.example_input(3)
    assert tokens.dtype == torch.int64 and tokens.shape == (3, 16)
    assert torch.equal(tokens, text.example_input(3))  # fixed inputs
    with tracing_mode(image.module):
        assert image.module(image.example_input(2)).shape == (2, 64)
    with tracing_mode(text.module):
        assert text.module(tokens).shape == (3, 64)
    for tower in towers.values():
        assert count_params(tower) == sum(p.numel() for p in tower.module.parameters())
    # ViT by hand: 16 patches + class token = 17 tokens, width 32, MLP 64, 2 layers
    per_layer = 17 * 32 * 96 + 2 * 17 * 17 * 16 * 2 + 17 * 32 * 32 + 2 * 17 * 32 * 64
    patch_embed = 16 * 32 * (3 * 8 * 8)
    head = 32 * 64  # projection of the pooled token
    assert tower_cost(image)["macs"] == patch_embed + 2 * per_layer + head
    total = model_cost(towers)
    assert total["macs"] == total["towers"]["image"]["macs"] + total["towers"]["text"]["macs"]


def test_student_reusing_teacher_text_tower():
    config = StudentConfig(embed_dim=64, vision=TINY.vision)
    assert set(towers_from_student(config)) == {"image"}
    teacher_text = {"context_length": 12, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1}
    towers = towers_from_student(config, teacher_text_cfg=teacher_text)
    assert towers["text"].example_input(2).shape == (2, 12)


@pytest.mark.parametrize("name", ["convnext_atto", "efficientvit_m0", "resnet18"])
def test_timm_towers_agree_with_flop_counter_mode(name):
    from torch.utils.flop_counter import FlopCounterMode

    config = StudentConfig(embed_dim=128, vision=VisionTowerConfig(kind="timm", timm_model=name, image_size=224))
    tower = towers_from_student(config)["image"]
    cost = tower_cost(tower)
    with tracing_mode(tower.module) as module:
        counter = FlopCounterMode(display=False)
        with counter:
            module(tower.example_input(1))
    assert cost["uncounted_ops"] == {}
    assert cost["macs"] == pytest.approx(counter.get_total_flops() / 2, rel=0.01)


# ---- open_clip models and their published profile -------------------------------------------

@pytest.fixture(scope="module")
def vit_b_32():
    return resolve_model("ViT-B-32")[1]


def test_vit_b_32_matches_open_clip_profile(vit_b_32):
    image, text = tower_cost(vit_b_32["image"]), tower_cost(vit_b_32["text"])
    assert image["gflops"] == pytest.approx(8.82, rel=0.01)
    assert text["gflops"] == pytest.approx(5.96, rel=0.01)
    assert image["input_shape"] == [1, 3, 224, 224] and text["input_shape"] == [1, 77]
    assert image["uncounted_ops"] == {} and text["uncounted_ops"] == {}


def test_open_clip_text_tower_params(vit_b_32):
    image, text = vit_b_32["image"], vit_b_32["text"]
    visual_ids = {id(p) for p in image.module.parameters()}
    assert not any(id(p) in visual_ids for p in text.module.parameters())
    assert count_params(text) / 1e6 == pytest.approx(63.43, abs=0.01)  # open_clip's profile table


@pytest.mark.parametrize("custom_text", [False, True])
def test_towers_from_open_clip_clip_and_custom_text_clip(custom_text):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    torch.manual_seed(0)
    cls = CustomTextCLIP if custom_text else CLIP
    model = cls(embed_dim=64, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
                text_cfg=CLIPTextCfg(context_length=16, vocab_size=1000, width=32, heads=2, layers=1)).eval()
    towers = towers_from_open_clip(model)
    image, text = towers["image"], towers["text"]
    # the two towers partition the model's weights (plus the logit scale)
    assert count_params(image) + count_params(text) + 1 == sum(p.numel() for p in model.parameters())
    tokens = text.example_input(2)
    assert tokens.shape == (2, 16) and int(tokens.max()) == 999  # the EOT id closes each row
    with tracing_mode(model):
        assert torch.allclose(text.module(tokens), model.encode_text(tokens))
        assert torch.allclose(image.module(image.example_input(2)), model.encode_image(image.example_input(2)))
    # 16 tokens x (qkv + out + 2 MLP) + attention + pooled projection, by hand
    expected_text = 16 * 32 * (96 + 32 + 2 * 128) + 2 * 16 * 16 * 32 + 32 * 64
    assert tower_cost(text)["macs"] == expected_text


@pytest.mark.slow
def test_vit_l_14_matches_open_clip_profile():
    towers = resolve_model("ViT-L-14")[1]
    assert tower_cost(towers["image"])["gflops"] == pytest.approx(162.03, rel=0.01)
    assert tower_cost(towers["text"])["gflops"] == pytest.approx(13.3, rel=0.01)


# ---- resolve_model errors ----------------------------------------------------------------------

def test_resolve_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="ViT-B-32"):
        resolve_model("ViT-B-23")


def test_resolve_student_json(tmp_path):
    path = tmp_path / "student.json"
    path.write_text(TINY.to_json())
    name, towers = resolve_model(str(path))
    assert name == "student" and set(towers) == {"image", "text"}
    with pytest.raises(FileNotFoundError, match="missing.json"):
        resolve_model(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 64, "vision": {"kind": "vit", "layers": 2}}))
    with pytest.raises(ValueError, match="bad.json"):
        resolve_model(str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        resolve_model(str(broken))
