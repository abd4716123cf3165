from __future__ import annotations

import os

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest runs things in parallel processes.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def make_tiny_clip(embed_dim: int = 64, image_size: int = 32, context_length: int = 16, seed: int = 0):
    """A small random-init open_clip CLIP and its model config (a stand-in teacher)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    cfg = {"embed_dim": embed_dim,
           "vision_cfg": {"image_size": image_size, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
           "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    torch.manual_seed(seed)
    model = CLIP(embed_dim, CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"]))
    return model, cfg


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """An open_clip checkpoint folder holding a tiny random-init CLIP."""
    from dime_nas.teacher import save_checkpoint_dir

    model, cfg = make_tiny_clip()
    out = tmp_path_factory.mktemp("tiny_teacher")
    preprocess = {"size": [32, 32], "mean": [0.48145466, 0.4578275, 0.40821073],
                  "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest"}
    return save_checkpoint_dir(model, cfg, out, preprocess)
