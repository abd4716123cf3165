"""ShapesWorld evaluation suite: zero-shot classification tasks and a retrieval set.

In the spirit of ELEVATER: each task has class names, several prompt templates and
labelled images, all generated deterministically from a seed. Every image makes its
label unambiguous: a single object for shape, colour, position and size (the position
task puts it cleanly on one side), 1-4 non-overlapping objects for count. Labels are
balanced. Each task can be rendered under a distribution shift (``SHIFTS``: "sketch",
"noisy"); a shifted task has the same scenes and labels as the plain one.

API:
    TASKS                                    task names, in suite order
    task_spec(name) -> (classnames, templates)
    eval_suite(seed, n_per_class=20, image_size=64, shift=None, tasks=None) -> list[EvalTask]
    retrieval_set(seed, n=200, image_size=64, shift=None) -> RetrievalSet

Class names and templates use the caption vocabulary of ``shapes.caption``, e.g.
"a picture of one {} shape." with "red", or "a photo of {}." with "three shapes".
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .captions import caption, describe
from .render import SHIFTS, render
from .scene import COLOURS, NUMBER_WORDS, POSITION_PHRASES, SHAPES, SIZES, Scene, sample_scene

_POSITIONS = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class _Spec:
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    scene: Callable[[np.random.Generator, int], Scene]  # (rng, label) -> scene


_SPECS: dict[str, _Spec] = {
    "shape": _Spec(
        SHAPES,
        ("a picture of a {}.", "a photo of a {}.", "there is a {}.", "a drawing of a {}.",
         "a {} in the picture."),
        lambda rng, k: sample_scene(rng, n_objects=1, shape=SHAPES[k])),
    "colour": _Spec(
        tuple(COLOURS),
        ("a picture of one {} shape.", "a photo of one {} object.", "there is one {} shape.",
         "the shape is {}.", "one {} object in the picture."),
        lambda rng, k: sample_scene(rng, n_objects=1, colour=list(COLOURS)[k])),
    "count": _Spec(
        tuple(f"{w} shape" if i == 0 else f"{w} shapes" for i, w in enumerate(NUMBER_WORDS)),
        ("a picture of {}.", "a photo of {}.", "an image of {}.", "a drawing of {}.",
         "{} in the picture."),
        lambda rng, k: sample_scene(rng, n_objects=k + 1)),
    "position": _Spec(
        tuple(POSITION_PHRASES[p] for p in _POSITIONS),
        ("a picture of a shape {}.", "a photo of one object {}.", "there is a shape {}.",
         "one shape {} in the picture.", "an image of an object {}."),
        lambda rng, k: sample_scene(rng, n_objects=1, region=_POSITIONS[k])),
    "size": _Spec(
        SIZES,
        ("a picture of one {} shape.", "a photo of one {} object.", "there is one {} shape.",
         "the shape is {}.", "one {} object in the picture."),
        lambda rng, k: sample_scene(rng, n_objects=1, size=SIZES[k])),
}
TASKS = tuple(_SPECS)


@dataclass
class EvalTask:
    """One zero-shot classification task: images with integer labels into ``classnames``."""

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]  # each has one "{}" for a class name
    images: list[Image.Image]
    labels: np.ndarray  # int64, one per image
    scenes: list[Scene]  # what each image shows (the ground truth behind its label)
    shift: str | None = None  # None: in distribution; else one of SHIFTS

    @property
    def key(self) -> str:
        """Unique name within a suite, e.g. "shape" or "shape-sketch"."""
        return self.name if self.shift is None else f"{self.name}-{self.shift}"

    def prompts(self) -> list[list[str]]:
        """For each class, its name filled into every template."""
        return [[t.format(c) for t in self.templates] for c in self.classnames]


@dataclass
class RetrievalSet:
    """Images with one caption each; caption i describes image i and no other image."""

    images: list[Image.Image]
    captions: list[str]
    scenes: list[Scene]
    shift: str | None = None


def task_spec(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(classnames, templates) of a task."""
    if name not in _SPECS:
        raise ValueError(f"unknown ShapesWorld task {name!r}; expected one of {TASKS}")
    spec = _SPECS[name]
    return spec.classnames, spec.templates


def _check_shift(shift: str | None) -> str:
    if shift is not None and shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; expected None or one of {SHIFTS}")
    return shift or "plain"


def _check_positive(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _tag(name: str) -> int:
    # Stable across processes (unlike hash()); adding a task leaves the others unchanged.
    return zlib.crc32(name.encode())


def eval_suite(seed: int, n_per_class: int = 20, image_size: int = 64, shift: str | None = None,
               tasks: Sequence[str] | None = None) -> list[EvalTask]:
    """Build the zero-shot classification tasks.

    Args:
        seed: the suite is a function of it (and of the other arguments).
        n_per_class: images per class; labels come shuffled but exactly balanced.
        image_size: rendered side in pixels.
        shift: None for in-distribution images, else one of ``SHIFTS``; scenes and
            labels do not depend on it.
        tasks: names from ``TASKS`` (default: all).
    """
    style = _check_shift(shift)
    _check_positive("n_per_class", n_per_class)
    out = []
    for name in TASKS if tasks is None else tasks:
        classnames, templates = task_spec(name)
        spec = _SPECS[name]
        order = np.random.default_rng([int(seed), _tag(name)])
        labels = order.permutation(np.repeat(np.arange(len(classnames)), int(n_per_class)))
        scenes = [spec.scene(np.random.default_rng([int(seed), _tag(name), i]), int(k)) for i, k in enumerate(labels)]
        images = [render(scene, image_size, style) for scene in scenes]
        out.append(EvalTask(name, classnames, templates, images, labels.astype(np.int64), scenes, shift))
    return out


# Cells of a 3x3 grid: most specific position phrase of each is distinct.
_CELLS = [(x, y) for y in (0.22, 0.5, 0.78) for x in (0.22, 0.5, 0.78)]


def _retrieval_scene(rng: np.random.Generator) -> Scene:
    """1-2 objects, each near a grid-cell centre, never in adjacent cells."""
    n = int(rng.integers(1, 3))
    scene = sample_scene(rng, n_objects=n)
    while True:
        cells = rng.choice(len(_CELLS), size=n, replace=False)
        pts = [_CELLS[c] for c in cells]
        if n == 1 or np.hypot(pts[0][0] - pts[1][0], pts[0][1] - pts[1][1]) > 0.5:
            break
    objects = []
    for obj, (cx, cy) in zip(scene.objects, pts):
        lo, hi = obj.radius + 0.02, 1 - obj.radius - 0.02
        x, y = np.clip(np.array([cx, cy]) + rng.uniform(-0.03, 0.03, size=2), lo, hi)
        objects.append(replace(obj, x=float(x), y=float(y)))
    return replace(scene, objects=tuple(objects))


def retrieval_set(seed: int, n: int = 200, image_size: int = 64, shift: str | None = None) -> RetrievalSet:
    """Images paired with one full caption each; no two captions say the same thing.

    Each caption names every object's size, texture, colour, shape and most specific
    position ("a small red circle in the top left corner and a large blue star at the
    bottom"), so recall@1 measures real image-text matching.
    """
    style = _check_shift(shift)
    _check_positive("n", n)
    scenes, captions, seen = [], [], set()
    i = 0
    while len(scenes) < n:
        if i > 50 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct retrieval scenes; ask for fewer")
        rng = np.random.default_rng([int(seed), _tag("retrieval"), i])
        i += 1
        scene = _retrieval_scene(rng)
        _, key = describe(scene, rng, most_specific=True)
        if key in seen:
            continue
        seen.add(key)
        scenes.append(scene)
        captions.append(caption(scene, rng, full=True))
    return RetrievalSet([render(s, image_size, style) for s in scenes], captions, scenes, shift)
