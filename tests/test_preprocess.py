"""Student inputs: a corpus converted once per resolution gives exactly the per-batch conversion."""
from __future__ import annotations

import numpy as np
import torch

from dime_nas import preprocess
from dime_nas.preprocess import CLIP_MEAN, CLIP_STD, corpus_inputs, to_model_input


class _Pixels:
    """Rows of a uint8 image array, taken along the first axis (as the feature cache's arrays are)."""

    def __init__(self, a: np.ndarray):
        self.a, self.taken = a, 0

    def __len__(self) -> int:
        return len(self.a)

    def take(self, idx: np.ndarray) -> np.ndarray:
        self.taken += len(idx)
        return self.a[np.asarray(idx)]


class _Cache:
    def __init__(self, n: int, root: str):
        self.pixels = _Pixels(np.random.default_rng(0).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8))
        self.root = root


def test_converted_corpus_equals_per_batch_conversion_and_is_built_once(monkeypatch):
    monkeypatch.setattr(preprocess, "_CONVERTED", type(preprocess._CONVERTED)())
    cache = _Cache(300, "/cache/a")
    idx = np.array([5, 299, 0, 17, 17])
    for size in (32, 48, 64):
        expected = to_model_input(cache.pixels.take(idx), size, CLIP_MEAN, CLIP_STD)
        got = corpus_inputs(cache, size, CLIP_MEAN, CLIP_STD)(idx)
        assert torch.equal(got, expected)
    cache.pixels.taken = 0
    corpus_inputs(cache, 48, CLIP_MEAN, CLIP_STD)(idx)  # kept: the corpus is not read again
    assert cache.pixels.taken == 0
    corpus_inputs(_Cache(300, "/cache/b"), 32, CLIP_MEAN, CLIP_STD)  # a fourth table drops the oldest (32 px of a)
    assert len(preprocess._CONVERTED) == preprocess.CONVERTED_KEEP
    assert not any(k[0] == "/cache/a" and k[2] == 32 for k in preprocess._CONVERTED)


def test_large_or_augmented_corpora_convert_each_batch(monkeypatch):
    monkeypatch.setattr(preprocess, "_CONVERTED", type(preprocess._CONVERTED)())
    monkeypatch.setattr(preprocess, "CONVERTED_MAX_BYTES", 1000)
    cache = _Cache(20, "/cache/c")
    x = corpus_inputs(cache, 32, CLIP_MEAN, CLIP_STD)(np.array([1, 2]))
    assert x.shape == (2, 3, 32, 32) and cache.pixels.taken == 2 and not preprocess._CONVERTED
    monkeypatch.setattr(preprocess, "CONVERTED_MAX_BYTES", 2**30)
    gen = torch.Generator().manual_seed(0)
    corpus_inputs(cache, 32, CLIP_MEAN, CLIP_STD, augment=True, generator=gen)(np.array([1]))
    assert not preprocess._CONVERTED  # augmentation draws new crops each time: nothing to keep
