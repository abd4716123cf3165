from __future__ import annotations

import os

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


def make_corpora(root: Path, n_images: int = 40, n_sentences: int = 30) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    images = root / "images"
    for i in range(n_images):
        (images / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"d{i % 3}" / f"{i:03d}.png")
    (images / "d0" / "broken.png").write_bytes(b"not a png at all")
    sentences = root / "sentences.txt"
    lines = [f"sentence number {i}" for i in range(n_sentences)] + ["", "sentence number 3"]
    sentences.write_text("\n".join(lines) + "\n")
    task = root / "task"
    for c in ("red", "blue"):
        (task / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(task / c / f"{i}.png")
    (task / "task.json").write_text(json.dumps({"templates": ["a {} thing.", "the {} one."]}))
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": f"task/red/{i}.png", "caption": f"caption {i}"}) + "\n"
                             for i in range(3)))
    return images, sentences, root


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory, tiny_teacher_dir):
    """A complete feature cache of random images/sentences embedded by the tiny teacher."""
    from dime_nas.data.cache import build_cache
    from dime_nas.data.corpora import open_image_corpus, open_sentence_corpus
    from dime_nas.data.eval_sets import EvalSuite, load_folder_task, load_retrieval_pairs
    from dime_nas.teacher import TeacherSpec, load_teacher

    root = tmp_path_factory.mktemp("small_corpora")
    make_corpora(root, n_images=96, n_sentences=96)
    teacher = load_teacher(TeacherSpec(checkpoint=str(tiny_teacher_dir)))
    suite = EvalSuite([load_folder_task(root / "task", name="colour")], load_retrieval_pairs(root / "pairs.jsonl"))
    return build_cache(teacher, open_image_corpus(root / "images"), open_sentence_corpus(root / "sentences.txt"),
                       suite, root / "cache", pixel_size=32, chunk_size=64, batch_size=32, progress=False)
