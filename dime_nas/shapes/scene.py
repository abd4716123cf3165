"""ShapesWorld scenes: 1-4 coloured shapes on a background, and how they are sampled.

A :class:`Scene` holds 1-4 :class:`ShapeObject` (shape, colour, size, centre, texture),
a background colour and an amount of faint background clutter. Everything random is
drawn from a ``numpy`` Generator, so the same seed gives the same scene in every process.

API:
    sample_scene(rng, *, n_objects=None, shape=None, colour=None, size=None,
                 region=None, same_prob=0.3, texture_prob=0.3, clutter_prob=0.5) -> Scene
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

# Silhouettes that stay distinct at 32 px (a hexagon reads as a circle there).
SHAPES = ("circle", "square", "triangle", "star", "moon", "cross", "diamond", "heart")
# Well separated in RGB (pairwise distance >= 85) and from the grey backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 90, 230),
    "purple": (140, 60, 200),
    "pink": (245, 130, 200),
}
SIZES = ("small", "large")
# Radius of the bounding circle as a fraction of the image side: large enough that a
# small shape keeps its outline at 32 px, distinct enough that size is unambiguous.
SIZE_RADIUS = {"small": 0.15, "large": 0.24}
TEXTURES = ("plain", "striped", "dotted")
REGIONS = ("left", "right", "top", "bottom", "middle")
NUMBER_WORDS = ("one", "two", "three", "four")
MAX_OBJECTS = len(NUMBER_WORDS)

POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "middle": "in the middle",
}
_GAP = 0.04  # minimum free space between two objects' bounding circles
_EDGE = 0.02  # minimum free space between an object and the image border
_N_OBJECT_WEIGHTS = (0.4, 0.2, 0.2, 0.2)  # single objects are what most tasks show



@dataclass(frozen=True)
class ShapeObject:
    """One object: what it is and where its centre lies (fractions of the image side)."""

    shape: str
    colour: str
    size: str
    x: float  # centre, from the left edge
    y: float  # centre, from the top edge
    texture: str = "plain"

    def __post_init__(self) -> None:
        for name, value, allowed in (("shape", self.shape, SHAPES), ("colour", self.colour, COLOURS),
                                     ("size", self.size, SIZES), ("texture", self.texture, TEXTURES)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {tuple(allowed)}")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise ValueError(f"object centre ({self.x}, {self.y}) lies outside the unit square")

    @property
    def radius(self) -> float:
        """Bounding-circle radius as a fraction of the image side."""
        return SIZE_RADIUS[self.size]

    @property
    def regions(self) -> frozenset[str]:
        """The position words (see ``REGIONS``) true of this object."""
        out = set()
        if self.x < 0.4:
            out.add("left")
        if self.x > 0.6:
            out.add("right")
        if self.y < 0.4:
            out.add("top")
        if self.y > 0.6:
            out.add("bottom")
        if 0.4 <= self.x <= 0.6 and 0.4 <= self.y <= 0.6:
            out.add("middle")
        return frozenset(out)


@dataclass(frozen=True)
class Scene:
    """A full description of one image; ``render`` is a pure function of it."""

    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int] = (90, 90, 90)
    clutter: int = 0  # number of faint background strokes
    seed: int = 0  # drives clutter geometry and noise

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background must be an RGB triple in 0..255, got {self.background}")
        if self.clutter < 0:
            raise ValueError(f"clutter must be >= 0, got {self.clutter}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


# ---------------------------------------------------------------------------- sampling

def _check_choice(name: str, value: str | None, allowed: Iterable[str]) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {tuple(allowed)}")


def _position_bounds(radius: float, region: str | None) -> tuple[float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi) for a centre; a region gives a clean, unambiguous spot."""
    lo, hi = radius + _EDGE, 1.0 - radius - _EDGE
    centre = (0.42, 0.58)
    if region is None:
        return lo, hi, lo, hi
    if region == "left":
        return lo, 0.32, *centre
    if region == "right":
        return 0.68, hi, *centre
    if region == "top":
        return *centre, lo, 0.32
    if region == "bottom":
        return *centre, 0.68, hi
    return *centre, *centre  # middle


def _place(rng: np.random.Generator, radii: Sequence[float], region: str | None,
           tries: int = 60) -> list[tuple[float, float]] | None:
    """Non-overlapping centres for the given radii, or None if sequential sampling fails."""
    placed: list[tuple[float, float, float]] = []
    for r in radii:
        x0, x1, y0, y1 = _position_bounds(r, region)
        for _ in range(tries):
            x, y = float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))
            if all(math.hypot(x - px, y - py) >= r + pr + _GAP for px, py, pr in placed):
                placed.append((x, y, r))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def sample_scene(rng: np.random.Generator, *, n_objects: int | None = None, shape: str | None = None,
                 colour: str | None = None, size: str | None = None, region: str | None = None,
                 same_prob: float = 0.3, texture_prob: float = 0.3, clutter_prob: float = 0.5) -> Scene:
    """Draw a random scene.

    Args:
        rng: the source of randomness (the scene is a function of its state).
        n_objects: 1-4; random (40% single objects) when None.
        shape, colour, size: fix that attribute for every object.
        region: place the single object cleanly in one of ``REGIONS`` (needs n_objects=1).
        same_prob: chance that all objects share shape, colour, size and texture.
        texture_prob: chance that an object is striped or dotted.
        clutter_prob: chance of faint background strokes.

    Returns:
        A Scene. Objects never overlap; objects sharing shape, colour and size share
        their texture too, so a phrase like "two small red triangles" stays exact.
    """
    _check_choice("shape", shape, SHAPES)
    _check_choice("colour", colour, COLOURS)
    _check_choice("size", size, SIZES)
    _check_choice("region", region, REGIONS)
    if n_objects is None:
        n_objects = int(rng.choice(MAX_OBJECTS, p=_N_OBJECT_WEIGHTS)) + 1
    if not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be in 1..{MAX_OBJECTS}, got {n_objects}")
    if region is not None and n_objects != 1:
        raise ValueError(f"region={region!r} places a single object; got n_objects={n_objects}")

    def draw_attrs() -> tuple[str, str, str, str]:
        tex = "plain"
        if rng.random() < texture_prob:
            tex = str(rng.choice(TEXTURES[1:]))
        return (shape or str(rng.choice(SHAPES)), colour or str(rng.choice(list(COLOURS))),
                size or str(rng.choice(SIZES)), tex)

    same = n_objects > 1 and rng.random() < same_prob
    first = draw_attrs()
    attrs = [first if same else (first if i == 0 else draw_attrs()) for i in range(n_objects)]
    for _ in range(50):
        centres = _place(rng, [SIZE_RADIUS[a[2]] for a in attrs], region)
        if centres is not None:
            break
        if size is None:  # crowded: shrink one large object (all of them if they must match)
            large = [i for i, a in enumerate(attrs) if a[2] == "large"]
            for i in (large if same else large[-1:]):
                attrs[i] = (attrs[i][0], attrs[i][1], "small", attrs[i][3])
    else:
        raise ValueError(f"cannot place {n_objects} {size or ''} objects without overlap")
    # Same shape, colour and size => same texture (keeps counted phrases exact).
    texture_of: dict[tuple[str, str, str], str] = {}
    objects = []
    for (shp, col, sz, tex), (x, y) in zip(attrs, centres):
        tex = texture_of.setdefault((shp, col, sz), tex)
        objects.append(ShapeObject(shp, col, sz, x, y, tex))
    grey = int(rng.integers(60, 111))
    background = tuple(int(np.clip(grey + t, 0, 255)) for t in rng.integers(-6, 7, size=3))
    clutter = int(rng.integers(3, 10)) if rng.random() < clutter_prob else 0
    return Scene(tuple(objects), background, clutter, int(rng.integers(2**31)))
