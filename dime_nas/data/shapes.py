"""ShapesWorld: a procedural world of coloured shapes, and sentences that are true of it.

The demo and the tests need images, sentences and labelled evaluation data without
downloading anything; ShapesWorld makes them from a seed.

A :class:`Scene` holds 1-4 :class:`ShapeObject` (shape, colour, size, centre, texture),
a background colour and an amount of faint background clutter. Everything random is
drawn from a ``numpy`` Generator, and rendering is a pure function of the scene, so the
same seed gives the same bytes in every process.

API:
    sample_scene(rng, *, n_objects=None, shape=None, colour=None, size=None,
                 region=None, same_prob=0.3, texture_prob=0.3, clutter_prob=0.5) -> Scene
    render(scene, size=64, style="plain") -> PIL.Image (RGB, size x size)
    render_batch(scenes, size=64, style="plain") -> np.ndarray uint8 (N, size, size, 3)
    caption(scene, rng, *, full=False) -> str   (a true sentence about the scene)
    describe(scene, rng, *, most_specific=False) -> (str, key)   every object, no frame
    stream_scenes(seed, n, stream) -> Iterator[Scene]     stream in STREAMS
    image_stream(seed, n, size=64, style="plain") -> Iterator[PIL.Image]
    sentence_stream(seed, n) -> Iterator[str]
    paired_samples(seed, n, size=64) -> Iterator[tuple[PIL.Image, str]]
    paired_arrays(seed, n, size=64) -> tuple[np.ndarray, list[str]]

Styles: "plain" (the training distribution) and the distribution shifts in ``SHIFTS``:
"sketch" (coloured outlines on blank paper, no texture or clutter) and "noisy" (heavy
clutter, blur and pixel noise). Shifts never change what a caption or label says.

Caption semantics (what "true" means): a noun phrase names every object matching its
attributes, with an exact count ("two red triangles": exactly two objects are red
triangles; "three shapes": exactly three objects); a position phrase holds for each of
them ("on the left": centre x < 0.4, "at the top": y < 0.4, "in the middle": both
within [0.4, 0.6]); "the red star" and the phrases in "a red star above a blue circle"
name exactly one object each, and the relation holds with a margin of 0.15.
Attribute words are the class names of the evaluation tasks ("red", "triangle",
"small", "on the left", "three"), so prompts and captions share one vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
SHIFTS = ("sketch", "noisy")
STYLES = ("plain",) + SHIFTS
STREAMS = ("images", "sentences", "paired")

POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "middle": "in the middle",
}
_CORNERS = {(v, h): f"in the {v} {h} corner" for v in ("top", "bottom") for h in ("left", "right")}
_RELATIONS = ("above", "below", "to the left of", "to the right of")
_RELATION_MARGIN = 0.15
_GAP = 0.04  # minimum free space between two objects' bounding circles
_EDGE = 0.02  # minimum free space between an object and the image border
# Distinct streams draw from distinct seed sequences, so the image and sentence
# corpora built from one user seed are independent, as DIME-FM assumes.
_STREAM_TAGS = {"images": 101, "sentences": 202, "paired": 303}
_N_OBJECT_WEIGHTS = (0.4, 0.2, 0.2, 0.2)  # single objects are what most tasks show
_SKETCH_PAPER = (225, 225, 220)


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


# --------------------------------------------------------------------------- rendering

def _unit_polygons() -> dict[str, np.ndarray]:
    """Each shape as polygon vertices inside the unit circle (y points down)."""
    def ring(k: int, radius: float, phase: float) -> np.ndarray:
        a = phase + 2 * np.pi * np.arange(k) / k
        return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)

    star = ring(10, 1.0, -np.pi / 2)
    star[1::2] *= 0.45  # fat inner radius keeps the points visible at low resolution
    a, b = 0.3, 0.92
    cross = np.array([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b),
                      (-a, a), (-b, a), (-b, -a), (-a, -a)])
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    heart = np.stack([16 * np.sin(t) ** 3,
                      -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], axis=1)
    heart -= (heart.max(0) + heart.min(0)) / 2
    heart /= np.abs(heart).max() * 1.05
    triangle = ring(3, 1.1, -np.pi / 2) + (0.0, 0.2)
    # Crescent: the outer circle minus an offset inner one, opening to the right.
    big, small, offset = 0.95, 0.78, 0.5
    ix = (big**2 - small**2 + offset**2) / (2 * offset)
    iy = math.sqrt(big**2 - ix**2)
    to, ti = math.atan2(iy, ix), math.atan2(iy, ix - offset)
    outer = np.linspace(to, 2 * np.pi - to, 28)
    inner = np.linspace(2 * np.pi - ti, ti, 20)
    moon = np.concatenate([np.stack([big * np.cos(outer), big * np.sin(outer)], 1),
                           np.stack([offset + small * np.cos(inner), small * np.sin(inner)], 1)])
    moon[:, 0] += (big - ix) / 2  # centre the bounding box horizontally
    return {
        "circle": ring(48, 0.95, 0.0),
        "square": np.array([(-0.72, -0.72), (0.72, -0.72), (0.72, 0.72), (-0.72, 0.72)]),
        "triangle": triangle,
        "star": star,
        "moon": moon,
        "cross": cross,
        "diamond": np.array([(0.0, -1.0), (0.66, 0.0), (0.0, 1.0), (-0.66, 0.0)]),
        "heart": heart,
    }


_UNIT = _unit_polygons()


def _supersample(size: int) -> int:
    # Draw at 4x (2x above 96 px) and box-reduce: cheap antialiasing.
    return 4 if size <= 96 else 2


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, n: int, side: int,
                  background: tuple[int, int, int], contrast: int, width: int) -> None:
    """Grey strokes and specks: texture for the background, never a colour or a shape."""
    for _ in range(n):
        delta = int(rng.integers(-contrast, contrast + 1))
        grey = tuple(int(np.clip(c + delta, 0, 255)) for c in background)
        x0, y0 = rng.uniform(0, side, size=2)
        ang, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.4) * side
        if rng.random() < 0.75:
            draw.line([(x0, y0), (x0 + length * math.cos(ang), y0 + length * math.sin(ang))],
                      fill=grey, width=width)
        else:
            r = width * 1.2
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=grey)


def _draw_textured(img: Image.Image, pts: np.ndarray, colour: tuple[int, int, int],
                   texture: str, radius_px: float) -> None:
    """Fill the polygon with stripes or dots in a darker shade of its colour."""
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
    w, h = int(x1 - x0), int(y1 - y0)
    dark = tuple(int(c * 0.55) for c in colour)
    patch = Image.new("RGB", (w, h), colour)
    pd = ImageDraw.Draw(patch)
    period = max(4, int(radius_px * 0.5))
    if texture == "striped":
        for k in range(-h, w + period, period):
            pd.line([(k, 0), (k + h, h)], fill=dark, width=max(2, period // 2))
    else:  # dotted
        dot = period * 0.25
        for cy in np.arange(period / 2, h, period):
            for cx in np.arange(period / 2, w, period):
                pd.ellipse([cx - dot, cy - dot, cx + dot, cy + dot], fill=dark)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon((pts - (x0, y0)).ravel().tolist(), fill=255)
    img.paste(patch, (int(x0), int(y0)), mask)


def _check_render_args(size: int, style: str) -> int:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    if isinstance(size, bool) or int(size) != size or size < 8:
        raise ValueError(f"image size must be an integer >= 8, got {size!r}")
    return int(size)


def render(scene: Scene, size: int = 64, style: str = "plain") -> Image.Image:
    """Render a scene as a ``size`` x ``size`` RGB image.

    Args:
        scene: what to draw.
        size: output side in pixels (any size >= 8).
        style: "plain" (training distribution), "sketch" (outlines on paper) or
            "noisy" (heavy clutter, blur and noise); see ``STYLES``.
    """
    size = _check_render_args(size, style)
    ss = _supersample(size)
    side = size * ss
    rng = np.random.default_rng([scene.seed, STYLES.index(style)])
    background = _SKETCH_PAPER if style == "sketch" else scene.background
    img = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(img)
    if style == "plain" and scene.clutter:
        _draw_clutter(draw, rng, scene.clutter, side, background, contrast=30, width=ss)
    elif style == "noisy":
        _draw_clutter(draw, rng, scene.clutter + 25, side, background, contrast=70, width=2 * ss)
    for obj in scene.objects:
        radius_px = obj.radius * side
        pts = _UNIT[obj.shape] * radius_px + (obj.x * side, obj.y * side)
        colour = COLOURS[obj.colour]
        if style == "sketch":
            width = max(int(1.3 * ss), int(radius_px * 0.14))
            draw.polygon(pts.ravel().tolist(), outline=colour, width=width)
        elif obj.texture == "plain":
            draw.polygon(pts.ravel().tolist(), fill=colour)
        else:
            _draw_textured(img, pts, colour, obj.texture, radius_px)
    if ss > 1:
        img = img.reduce(ss)
    if style == "noisy":
        img = img.filter(ImageFilter.GaussianBlur(radius=max(0.6, size * 0.012)))
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, 22.0, size=(size, size, 3))
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    return img


def render_batch(scenes: Iterable[Scene], size: int = 64, style: str = "plain") -> np.ndarray:
    """Render scenes into one uint8 array of shape (N, size, size, 3)."""
    size = _check_render_args(size, style)
    scenes = list(scenes)
    out = np.empty((len(scenes), size, size, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        out[i] = np.asarray(render(scene, size, style))
    return out


# ----------------------------------------------------------------------------- captions

_DESCRIBED = ("size", "texture", "colour", "shape")  # adjective order in a noun phrase
_FRAMES = ("{}.", "a picture of {}.", "a photo of {}.", "an image of {}.", "a drawing of {}.",
           "{} in the picture.", "this picture shows {}.")


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x")) else "s")


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _eligible(obj: ShapeObject) -> list[str]:
    """Attributes a phrase may mention ("plain" is never said, so it never constrains)."""
    return [a for a in _DESCRIBED if a != "texture" or obj.texture != "plain"]


def _matching(scene: Scene, attrs: dict[str, str]) -> list[ShapeObject]:
    return [o for o in scene.objects if all(getattr(o, k) == v for k, v in attrs.items())]


def _nominal(attrs: dict[str, str], plural: bool, rng: np.random.Generator) -> str:
    """Adjectives and noun, e.g. "small striped red triangles" or "shape"."""
    words = [attrs[a] for a in _DESCRIBED[:3] if a in attrs]
    noun = attrs.get("shape") or str(rng.choice(("shape", "object")))
    words.append(_plural(noun) if plural else noun)
    return " ".join(words)


def _position_phrase(members: Sequence[ShapeObject], rng: np.random.Generator,
                     most_specific: bool = False) -> str | None:
    """A position phrase true of every member, or None if they share no region."""
    common = frozenset.intersection(*(o.regions for o in members))
    options = [POSITION_PHRASES[r] for r in REGIONS if r in common]
    corners = [p for (v, h), p in _CORNERS.items() if v in common and h in common]
    if most_specific:
        return (corners or options or [None])[0]
    options += corners
    return str(rng.choice(options)) if options else None


def _group_phrase(count: int, attrs: dict[str, str], position: str | None,
                  rng: np.random.Generator, quantifier: str | None = None) -> str:
    """Quantified noun phrase, e.g. "two small red triangles on the left"."""
    body = _nominal(attrs, count > 1, rng)
    if count > 1:
        quant = NUMBER_WORDS[count - 1]
    else:
        quant = quantifier or str(rng.choice(("a", "one")))
        if quant == "a":
            quant = _article(body)
    phrase = f"{quant} {body}"
    return f"{phrase} {position}" if position else phrase


def _full_groups(scene: Scene) -> list[tuple[dict[str, str], list[ShapeObject]]]:
    """The scene partitioned by (size, texture, colour, shape), in object order."""
    groups: dict[tuple[str, ...], list[ShapeObject]] = {}
    for o in scene.objects:
        groups.setdefault((o.size, o.texture, o.colour, o.shape), []).append(o)
    out = []
    for members in groups.values():
        o = members[0]
        out.append(({a: getattr(o, a) for a in _eligible(o)}, members))
    return out


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _frame(body: str, rng: np.random.Generator) -> str:
    if rng.random() < 0.25:  # "there is/are" agrees with the first noun phrase
        return f"there {'is' if body.split()[0] in ('a', 'an', 'one') else 'are'} {body}."
    return str(rng.choice(_FRAMES)).format(body)


def describe(scene: Scene, rng: np.random.Generator, *, most_specific: bool = False,
             position_prob: float = 0.7) -> tuple[str, tuple]:
    """Full description of every object, plus a canonical key of what it says.

    Returns:
        (body, key): a conjunction of noun phrases without a frame, and a hashable key
        equal for two scenes exactly when their descriptions say the same things.
    """
    phrases, key = [], []
    for attrs, members in _full_groups(scene):
        pos = None
        if most_specific or rng.random() < position_prob:
            pos = _position_phrase(members, rng, most_specific)
        phrases.append(_group_phrase(len(members), attrs, pos, rng))
        key.append((len(members), tuple(sorted(attrs.items())), pos))
    return _join(phrases), tuple(sorted(key, key=repr))


def _unique_description(scene: Scene, obj: ShapeObject, rng: np.random.Generator) -> dict[str, str]:
    """A random attribute subset that singles ``obj`` out, short ones more often.

    Returns {} when nothing does (two identical objects); callers check uniqueness.
    """
    eligible = _eligible(obj)
    subsets, weights = [], []
    for mask in range(1 << len(eligible)):
        attrs = {a: getattr(obj, a) for i, a in enumerate(eligible) if mask >> i & 1}
        if len(_matching(scene, attrs)) == 1:
            subsets.append(attrs)
            weights.append(0.5 ** len(attrs))  # "the star", as people say, over "the small red star"
    if not subsets:
        return {}
    return subsets[int(rng.choice(len(subsets), p=np.array(weights) / sum(weights)))]


def _group_caption(scene: Scene, rng: np.random.Generator) -> str:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    attrs = {a: getattr(obj, a) for a in _eligible(obj) if rng.random() < 0.5}
    members = _matching(scene, attrs)
    pos = _position_phrase(members, rng) if rng.random() < 0.5 else None
    return _frame(_group_phrase(len(members), attrs, pos, rng), rng)


def _focus_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One fact, in the words of the task prompts: "a triangle", "three red objects"."""
    focus = str(rng.choice(("shape", "colour", "size", "count", "position")))
    if focus == "count":
        return _count_caption(scene, rng)
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    if focus != "position":
        members = _matching(scene, {focus: getattr(obj, focus)})
        return _frame(_group_phrase(len(members), {focus: getattr(obj, focus)}, None, rng), rng)
    # Position: the smallest group around obj (everything, or one shared attribute) in one region.
    candidates = [{}] + [{a: getattr(obj, a)} for a in rng.permutation(_eligible(obj)).tolist()]
    for attrs in candidates:
        members = _matching(scene, attrs)
        pos = _position_phrase(members, rng)
        if pos:
            return _frame(_group_phrase(len(members), attrs, pos, rng), rng)
    return _group_caption(scene, rng)


def _count_caption(scene: Scene, rng: np.random.Generator) -> str:
    n = len(scene.objects)
    return _frame(_group_phrase(n, {}, None, rng), rng)


def _property_caption(scene: Scene, rng: np.random.Generator) -> str | None:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    attrs = _unique_description(scene, obj, rng)
    if len(_matching(scene, attrs)) != 1:
        return None  # two identical objects: nothing singles this one out
    props = [getattr(obj, a) for a in ("colour", "size") if a not in attrs]
    if obj.texture != "plain" and "texture" not in attrs:
        props.append(obj.texture)
    if "shape" not in attrs:
        props.append(f"{_article(obj.shape)} {obj.shape}")
    props += [POSITION_PHRASES[r] for r in REGIONS if r in obj.regions]
    if not props:
        return None
    prop = str(rng.choice(props))
    # A shape is named only once: "the red shape is a star", not "the red star is a star".
    return f"the {_nominal(attrs, False, rng)} is {prop}."


def _relation_caption(scene: Scene, rng: np.random.Generator) -> str | None:
    if len(scene.objects) < 2:
        return None
    i, j = rng.choice(len(scene.objects), size=2, replace=False)
    a, b = scene.objects[i], scene.objects[j]
    da, db = _unique_description(scene, a, rng), _unique_description(scene, b, rng)
    if len(_matching(scene, da)) != 1 or len(_matching(scene, db)) != 1:
        return None
    m = _RELATION_MARGIN
    holds = [a.y < b.y - m, a.y > b.y + m, a.x < b.x - m, a.x > b.x + m]
    rels = [r for r, ok in zip(_RELATIONS, holds) if ok]
    if not rels:
        return None
    body = f"{_group_phrase(1, da, None, rng, 'a')} {rng.choice(rels)} {_group_phrase(1, db, None, rng, 'a')}"
    return str(rng.choice(_FRAMES)).format(body)


def caption(scene: Scene, rng: np.random.Generator, *, full: bool = False) -> str:
    """A random sentence that is true of the scene (see the module docstring).

    Args:
        scene: the scene to describe.
        rng: source of randomness for the choice of facts and phrasing.
        full: describe every object with all its attributes and its most specific
            position (for retrieval); otherwise mix full descriptions, partial ones,
            one-fact ones ("three shapes", "a shape on the left"), properties ("the
            red shape is small") and relations.
    """
    if full:
        body, _ = describe(scene, rng, most_specific=True)
        return _frame(body, rng)
    # Full descriptions teach everything at once; one-fact captions make each attribute
    # matter on its own (else contrastive training leans on colour alone).
    kind = rng.choice(5, p=(0.35, 0.15, 0.3, 0.1, 0.1))
    text = None
    if kind == 0:
        body, _ = describe(scene, rng)
        text = _frame(body, rng)
    elif kind == 2:
        text = _focus_caption(scene, rng)
    elif kind == 3:
        text = _property_caption(scene, rng)
    elif kind == 4:
        text = _relation_caption(scene, rng)
    return text or _group_caption(scene, rng)


# ------------------------------------------------------------------------------ streams

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
    _check_render_args(size, style)
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
