"""The caption grammar: sentences that are true of a ShapesWorld scene.

Caption semantics (what "true" means): a noun phrase names every object matching its
attributes, with an exact count ("two red triangles": exactly two objects are red
triangles; "three shapes": exactly three objects); a position phrase holds for each of
them ("on the left": centre x < 0.4, "at the top": y < 0.4, "in the middle": both
within [0.4, 0.6]); "the red star" and the phrases in "a red star above a blue circle"
name exactly one object each, and the relation holds with a margin of 0.15.
Attribute words are the class names of the evaluation tasks ("red", "triangle",
"small", "on the left", "three"), so prompts and captions share one vocabulary.

API:
    caption(scene, rng, *, full=False) -> str   (a true sentence about the scene)
    describe(scene, rng, *, most_specific=False) -> (str, key)   every object, no frame
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .scene import NUMBER_WORDS, POSITION_PHRASES, REGIONS, Scene, ShapeObject

_CORNERS = {(v, h): f"in the {v} {h} corner" for v in ("top", "bottom") for h in ("left", "right")}
_RELATIONS = ("above", "below", "to the left of", "to the right of")
_RELATION_MARGIN = 0.15


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
