"""Seeded streams of ShapesWorld images, sentences and (for the demo teacher) pairs.

The image and sentence streams of one seed draw from distinct seed sequences, so the
corpora built from them are independent, as DIME-FM assumes.

API:
    stream_scenes(seed, n, stream) -> Iterator[Scene]     stream in STREAMS
    image_stream(seed, n, size=64, style="plain") -> Iterator[PIL.Image]
    sentence_stream(seed, n) -> Iterator[str]
    paired_samples(seed, n, size=64) -> Iterator[tuple[PIL.Image, str]]
    paired_arrays(seed, n, size=64) -> tuple[np.ndarray, list[str]]
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image

from .captions import caption
from .render import check_render_args, render
from .scene import Scene, sample_scene

STREAMS = ("images", "sentences", "paired")
_STREAM_TAGS = {"images": 101, "sentences": 202, "paired": 303}


def _stream_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """Item ``index`` of a stream has its own generator: random access, no drift."""
    return np.random.default_rng([int(seed), _STREAM_TAGS[stream], int(index)])


def _check_stream(seed: int, n: int, stream: str = "images", size: int = 64, style: str = "plain") -> int:
    """Validate stream arguments up front (generators would only fail when first read)."""
    if stream not in _STREAM_TAGS:
        raise ValueError(f"unknown stream {stream!r}; expected one of {STREAMS}")
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    check_render_args(size, style)
    return int(n)


def stream_scenes(seed: int, n: int, stream: str) -> Iterator[Scene]:
    """The scenes behind ``image_stream`` / ``sentence_stream`` / ``paired_samples``."""
    n = _check_stream(seed, n, stream)
    return (sample_scene(_stream_rng(seed, stream, i)) for i in range(n))


def image_stream(seed: int, n: int, size: int = 64, style: str = "plain") -> Iterator[Image.Image]:
    """``n`` unpaired images (the DIME-FM image corpus)."""
    n = _check_stream(seed, n, "images", size, style)
    return (render(scene, size, style) for scene in stream_scenes(seed, n, "images"))


def _sentence(seed: int, i: int) -> str:
    rng = _stream_rng(seed, "sentences", i)
    return caption(sample_scene(rng), rng)


def sentence_stream(seed: int, n: int) -> Iterator[str]:
    """``n`` unpaired sentences (the DIME-FM text corpus), about scenes never rendered."""
    n = _check_stream(seed, n, "sentences")
    return (_sentence(seed, i) for i in range(n))


def _pair(seed: int, i: int, size: int) -> tuple[Image.Image, str]:
    rng = _stream_rng(seed, "paired", i)
    scene = sample_scene(rng)
    return render(scene, size), caption(scene, rng)


def paired_samples(seed: int, n: int, size: int = 64) -> Iterator[tuple[Image.Image, str]]:
    """``n`` (image, caption) pairs, for contrastive training."""
    n = _check_stream(seed, n, "paired", size)
    return (_pair(seed, i, size) for i in range(n))


def paired_arrays(seed: int, n: int, size: int = 64) -> tuple[np.ndarray, list[str]]:
    """``paired_samples`` as a uint8 array (n, size, size, 3) and a list of captions."""
    pairs = paired_samples(seed, n, size)
    images = np.empty((int(n), int(size), int(size), 3), dtype=np.uint8)
    texts = []
    for i, (img, text) in enumerate(pairs):
        images[i] = np.asarray(img)
        texts.append(text)
    return images, texts
