from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_corpora as _make_corpora
from dime_nas.data.cache import CacheError, FeatureCache, build_cache
from dime_nas.data.corpora import open_image_corpus, open_sentence_corpus
from dime_nas.data.eval_sets import EvalSuite, load_folder_task, load_retrieval_pairs
from dime_nas.teacher import TeacherSpec, load_teacher, teacher_forward_count




def _suite(root: Path) -> EvalSuite:
    return EvalSuite([load_folder_task(root / "task", name="colour")], load_retrieval_pairs(root / "pairs.jsonl"))


def _build(teacher_dir, root, out, **kw):
    teacher = load_teacher(TeacherSpec(checkpoint=str(teacher_dir)))
    return build_cache(teacher, open_image_corpus(root / "images"), open_sentence_corpus(root / "sentences.txt"),
                       _suite(root), out, pixel_size=24, chunk_size=8, batch_size=4, progress=False, **kw)


def test_build_counts_skips_and_reuses_without_teacher(tmp_path, tiny_teacher_dir):
    _make_corpora(tmp_path)
    cache = _build(tiny_teacher_dir, tmp_path, tmp_path / "cache")
    s = cache.summary()
    assert s["images"] == 40 and s["images_skipped"] == {"decode_error": 1}
    assert s["sentences"] == 30 and s["sentences_dropped"] == {"empty": 1, "duplicate": 1, "bad_line": 0}
    assert cache.pixels.shape == (40, 24, 24, 3) and cache.image_emb.shape == (40, 64)
    assert cache.text_tokens.shape == (30, 16) and cache.pixels.take(np.array([0, 39])).dtype == np.uint8
    (task,) = cache.tasks("all")
    assert task.class_emb.shape == (2, 64) and task.prompt_tokens.shape == (2, 2, 16) and len(task.labels) == 6
    np.testing.assert_allclose(np.linalg.norm(task.class_emb, axis=1), 1, atol=1e-5)
    assert cache.retrieval("all").text_emb.shape == (3, 64)
    # second use: the same cache comes back and the teacher does not run
    before = teacher_forward_count()
    again = _build(tiny_teacher_dir, tmp_path, tmp_path / "cache")
    assert teacher_forward_count() == before
    np.testing.assert_array_equal(again.image_emb.take(np.arange(40)), cache.image_emb.take(np.arange(40)))


def test_cached_embeddings_equal_the_teachers(tmp_path, tiny_teacher_dir):
    _make_corpora(tmp_path, n_images=6)
    cache = _build(tiny_teacher_dir, tmp_path, tmp_path / "cache")
    teacher = load_teacher(TeacherSpec(checkpoint=str(tiny_teacher_dir)))
    key = (tmp_path / "cache" / "images" / "000000.keys.txt").read_text().split()[0]
    import torch

    expected = teacher.encode_images(teacher.preprocess(Image.open(tmp_path / "images" / key)).unsqueeze(0))
    np.testing.assert_allclose(cache.image_emb.take(np.array([0]))[0], expected[0].numpy(), rtol=2e-3, atol=2e-3)
    tokens = torch.from_numpy(cache.text_tokens.take(np.array([0])).astype(np.int64))
    np.testing.assert_allclose(cache.text_emb.take(np.array([0]))[0], teacher.encode_tokens(tokens)[0].numpy(),
                               rtol=2e-3, atol=2e-3)


def test_changed_corpus_file_rebuilds(tmp_path, tiny_teacher_dir):
    _make_corpora(tmp_path)
    _build(tiny_teacher_dir, tmp_path, tmp_path / "cache")
    Image.new("RGB", (40, 40), (255, 0, 0)).save(tmp_path / "images" / "d1" / "001.png")  # same name, new content
    os.utime(tmp_path / "images" / "d1" / "001.png", ns=(1, 1))
    before = teacher_forward_count()
    cache = _build(tiny_teacher_dir, tmp_path, tmp_path / "cache")
    assert teacher_forward_count() > before
    keys = cache.image_keys()
    red = cache.pixels.take(np.array([keys.index("d1/001.png")]))[0]
    assert (red[..., 0] > 200).all() and (red[..., 1] < 50).all()


def test_changed_teacher_rebuilds(tmp_path, tiny_teacher_dir):
    from conftest import make_tiny_clip

    from dime_nas.teacher import save_checkpoint_dir

    _make_corpora(tmp_path, n_images=5)
    first = _build(tiny_teacher_dir, tmp_path, tmp_path / "cache").image_emb.take(np.arange(5))
    model, cfg = make_tiny_clip(seed=1)
    other = save_checkpoint_dir(model, cfg, tmp_path / "other_teacher", {"size": [32, 32]})
    second = _build(other, tmp_path, tmp_path / "cache").image_emb.take(np.arange(5))
    assert not np.allclose(first, second)


def test_incomplete_cache_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"complete": False}))
    with pytest.raises(CacheError, match="not a complete"):
        FeatureCache(tmp_path)


_KILLABLE = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_cache import _build
import dime_nas.teacher as t

slow = t.Teacher.encode_images
def encode_slowly(self, x):
    time.sleep(0.15)
    return slow(self, x)
t.Teacher.encode_images = encode_slowly
_build(Path({teacher!r}), Path({root!r}), Path({out!r}))
print("finished")
"""


def test_killed_build_resumes_to_identical_arrays(tmp_path, tiny_teacher_dir):
    _make_corpora(tmp_path, n_images=60)
    out = tmp_path / "killed"
    script = _KILLABLE.format(tests=str(Path(__file__).parent), teacher=str(tiny_teacher_dir), root=str(tmp_path),
                              out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).parent.parent)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill -9 once two chunks are on disk
        m = out / "manifest.json"
        if m.exists() and len(json.loads(m.read_text())["images"]["chunks"]) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and 2 <= len(manifest["images"]["chunks"]) < 8
    resumed = _build(tiny_teacher_dir, tmp_path, out)
    assert resumed.manifest["resumed"] == 1
    fresh = _build(tiny_teacher_dir, tmp_path, tmp_path / "fresh")
    for name in ("image_emb", "pixels", "text_emb", "text_tokens"):
        a, b = getattr(resumed, name), getattr(fresh, name)
        np.testing.assert_array_equal(a.take(np.arange(len(a))), b.take(np.arange(len(b))))
    assert resumed.summary()["images_skipped"] == {"decode_error": 1}


def test_evaluation_splits_are_deterministic_disjoint_and_cover_every_image(tmp_path, tiny_teacher_dir):
    from dime_nas.data.cache import split_scores

    a = split_scores([Path("/x/red/1.png"), Path("/elsewhere/red/1.png"), Path("/x/blue/1.png")])
    assert a[0] == a[1] != a[2] and ((0 <= a) & (a < 1)).all()  # class folder + file name only
    scores = split_scores([Path(f"c{i % 8}/{i}.png") for i in range(4000)])
    assert abs((scores < 0.5).mean() - 0.5) < 0.03
    _make_corpora(tmp_path)
    cache = _build(tiny_teacher_dir, tmp_path, tmp_path / "cache")
    for fraction in (0.3, 0.5):
        cache.test_fraction = fraction
        (every,), (val,), (test,) = cache.tasks("all"), cache.tasks("val"), cache.tasks("test")
        assert len(val.labels) + len(test.labels) == len(every.labels)
        pairs = lambda t: {row.tobytes() for row in t.image_emb}  # noqa: E731
        assert not pairs(val) & pairs(test) and pairs(val) | pairs(test) == pairs(every)
        r_all, r_val, r_test = cache.retrieval("all"), cache.retrieval("val"), cache.retrieval("test")
        assert len(r_val.pixels) + len(r_test.pixels) == len(r_all.pixels)
    with pytest.raises(ValueError, match="split"):
        cache.tasks("train")


def test_corpus_images_identical_to_evaluation_images_are_refused_or_dropped(tmp_path, tiny_teacher_dir):
    import shutil

    from dime_nas.data.cache import EvalLeakError

    _make_corpora(tmp_path)
    leaked = next((tmp_path / "task" / "red").glob("*.png"))
    shutil.copy(leaked, tmp_path / "images" / "d1" / "copied_from_the_test.png")
    with pytest.raises(EvalLeakError, match="copied_from_the_test.png.*identical to evaluation image"):
        _build(tiny_teacher_dir, tmp_path, tmp_path / "cache")
    cache = _build(tiny_teacher_dir, tmp_path, tmp_path / "dropped", drop_eval_overlap=True)
    assert cache.summary()["images_skipped"].get("in_evaluation_set") == 1 and cache.n_images == 40
