"""Rendering ShapesWorld scenes: a pure function of the scene, the size and the style.

Styles: "plain" (the training distribution) and the distribution shifts in ``SHIFTS``:
"sketch" (coloured outlines on blank paper, no texture or clutter) and "noisy" (heavy
clutter, blur and pixel noise). Shifts never change what a caption or label says.

API:
    render(scene, size=64, style="plain") -> PIL.Image (RGB, size x size)
    render_batch(scenes, size=64, style="plain") -> np.ndarray uint8 (N, size, size, 3)
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .scene import COLOURS, Scene

SHIFTS = ("sketch", "noisy")
STYLES = ("plain",) + SHIFTS
_SKETCH_PAPER = (225, 225, 220)


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


def check_render_args(size: int, style: str) -> int:
    """Validate a render size and style (a ValueError names the bad one); returns the size."""
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
    size = check_render_args(size, style)
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
    size = check_render_args(size, style)
    scenes = list(scenes)
    out = np.empty((len(scenes), size, size, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        out[i] = np.asarray(render(scene, size, style))
    return out
