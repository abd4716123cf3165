"""ShapesWorld: determinism, true captions, distinguishable attributes, eval suite, files."""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dime_nas import shapes as sw
from dime_nas.shapes.files import write_shapes_world
from dime_nas.shapes.tasks import TASKS, eval_suite, retrieval_set, task_spec

# ------------------------------------------------------------------ caption oracle
# An independent reading of the caption grammar, with looser geometry than the
# generator's, so it checks meaning rather than re-running the generator's code.

_PREFIXES = ("a picture of ", "a photo of ", "an image of ", "a drawing of ", "this picture shows ",
             "there is ", "there are ")
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
_NOUNS = {**{s: s for s in sw.SHAPES}, **{s + ("es" if s.endswith("s") else "s"): s for s in sw.SHAPES}}
_GENERIC = {"shape", "object", "shapes", "objects"}
_POSITIONS = {
    "on the left": lambda o: o.x < 0.5, "on the right": lambda o: o.x > 0.5,
    "at the top": lambda o: o.y < 0.5, "at the bottom": lambda o: o.y > 0.5,
    "in the middle": lambda o: abs(o.x - 0.5) < 0.15 and abs(o.y - 0.5) < 0.15,
    "in the top left corner": lambda o: o.x < 0.5 and o.y < 0.5,
    "in the top right corner": lambda o: o.x > 0.5 and o.y < 0.5,
    "in the bottom left corner": lambda o: o.x < 0.5 and o.y > 0.5,
    "in the bottom right corner": lambda o: o.x > 0.5 and o.y > 0.5,
}
_RELATIONS = {"above": lambda a, b: a.y < b.y, "below": lambda a, b: a.y > b.y,
              "to the left of": lambda a, b: a.x < b.x, "to the right of": lambda a, b: a.x > b.x}


def _attribute(word: str) -> tuple[str, str] | None:
    for attr, values in (("colour", sw.COLOURS), ("size", sw.SIZES), ("texture", sw.TEXTURES[1:])):
        if word in values:
            return attr, word
    return None


def _nominal(words: list[str], scene: sw.Scene) -> tuple[list, bool]:
    """Objects matching 'adjectives noun', and whether the noun is plural."""
    *adjs, noun = words
    attrs = dict(_attribute(w) or pytest.fail(f"unknown adjective {w!r}") for w in adjs)
    if noun in _NOUNS:
        attrs["shape"] = _NOUNS[noun]
    else:
        assert noun in _GENERIC, f"unknown noun {noun!r}"
    plural = noun.endswith("s") and noun not in sw.SHAPES
    return [o for o in scene.objects if all(getattr(o, k) == v for k, v in attrs.items())], plural


def _check_np(phrase: str, scene: sw.Scene) -> list:
    """'<quant> <adjs> <noun> [<position>]' must be exactly true; returns its objects."""
    position = next((p for p in _POSITIONS if phrase.endswith(" " + p)), None)
    if position:
        phrase = phrase[: -len(position) - 1]
    quant, *words = phrase.split()
    assert quant in _NUMBERS, f"bad quantifier in {phrase!r}"
    members, plural = _nominal(words, scene)
    assert len(members) == _NUMBERS[quant], f"{phrase!r}: {len(members)} objects match"
    assert plural == (_NUMBERS[quant] > 1), f"number agreement in {phrase!r}"
    if quant in ("a", "an"):
        assert (quant == "an") == (words[0][0] in "aeiou"), f"article in {phrase!r}"
    if position:
        assert all(_POSITIONS[position](o) for o in members), f"{position!r} false in {phrase!r}"
    return members


def check_caption(text: str, scene: sw.Scene) -> None:
    """Fail unless the caption parses and every claim in it is true of the scene."""
    assert text.endswith(".") and text == text.strip(), text
    body = text[:-1].removesuffix(" in the picture")
    prefix = next((p for p in _PREFIXES if body.startswith(p)), "")
    body = body[len(prefix):]
    if prefix.startswith("there"):  # agrees with the first noun phrase
        assert (prefix == "there is ") == (body.split()[0] in ("a", "an", "one")), text
    prop = re.fullmatch(r"the (.+?) is (.+)", body)
    if prop:
        members, plural = _nominal(prop.group(1).split(), scene)
        assert len(members) == 1 and not plural, f"'the ...' must single out one object: {text!r}"
        obj, value = members[0], prop.group(2)
        if value in _POSITIONS:
            assert _POSITIONS[value](obj), text
        elif value.split()[0] in ("a", "an"):
            assert obj.shape == value.split()[1], text
        else:
            attr, word = _attribute(value) or pytest.fail(f"unknown property in {text!r}")
            assert getattr(obj, attr) == word, text
        return
    rel = re.fullmatch(r"(.+?) (above|below|to the left of|to the right of) (.+)", body)
    if rel:
        (a,), (b,) = _check_np(rel.group(1), scene), _check_np(rel.group(3), scene)
        assert _RELATIONS[rel.group(2)](a, b), text
        return
    for phrase in re.split(r", | and ", body):
        _check_np(phrase, scene)


def _scenes(n: int, seed: int = 0) -> list[sw.Scene]:
    return list(sw.stream_scenes(seed, n, "paired"))


# ------------------------------------------------------------------ determinism

_DIGEST_CODE = """
import hashlib
from dime_nas import shapes as sw

def digest():
    h = hashlib.sha256()
    for style in sw.STYLES:
        for im in sw.image_stream(7, 6, 32, style):
            h.update(im.tobytes())
    for s in sw.sentence_stream(7, 50):
        h.update(s.encode())
    return h.hexdigest()
"""


def test_same_seed_same_bytes_across_processes() -> None:
    scope: dict = {}
    exec(_DIGEST_CODE, scope)
    child = subprocess.run([sys.executable, "-c", _DIGEST_CODE + "print(digest())"], capture_output=True,
                           text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    assert child.stdout.strip() == scope["digest"]()


def test_different_seeds_differ() -> None:
    a = sw.render_batch(sw.stream_scenes(1, 8, "images"), 32)
    b = sw.render_batch(sw.stream_scenes(2, 8, "images"), 32)
    assert all(not np.array_equal(x, y) for x, y in zip(a, b))
    assert list(sw.sentence_stream(1, 20)) != list(sw.sentence_stream(2, 20))


def test_render_any_resolution() -> None:
    scene = _scenes(1)[0]
    for size in (8, 32, 57, 64, 224):
        img = sw.render(scene, size)
        assert img.mode == "RGB" and img.size == (size, size)
    assert sw.render_batch([scene] * 3, 40).shape == (3, 40, 40, 3)


# ------------------------------------------------------------------ captions

def test_captions_are_true_of_their_scene() -> None:
    rng = np.random.default_rng(0)
    kinds = set()
    for scene in _scenes(600, seed=3):
        for _ in range(4):
            text = sw.caption(scene, rng)
            check_caption(text, scene)
            kinds.add("relation" if re.search(r" (above|below|to the (left|right) of) ", text) else
                      "property" if re.search(r"(^|of )the ", text) else "group")
        check_caption(sw.caption(scene, rng, full=True), scene)
    assert kinds == {"relation", "property", "group"}


def test_oracle_rejects_false_captions() -> None:
    # The oracle above must be able to fail, or the test before it proves nothing.
    scene = sw.Scene((sw.ShapeObject("star", "red", "small", 0.2, 0.5),
                      sw.ShapeObject("circle", "blue", "large", 0.7, 0.3)))
    check_caption("a picture of a small red star on the left and a large blue circle.", scene)
    for false in ("a picture of two red stars.", "there are a red star.", "there is a green circle.", "a red star on the right.",
                  "the blue circle is small.", "a red star above a blue circle.", "one shape."):
        with pytest.raises(AssertionError):
            check_caption(false, scene)


def test_captions_vary_and_use_task_vocabulary() -> None:
    texts = [t for _, t in sw.paired_samples(5, 2000, 8)]
    assert len(set(texts)) > 1000
    # Every class name of every task occurs in the paired captions, in prompt form.
    corpus = "\n".join(texts)
    for name in TASKS:
        for cls in task_spec(name)[0]:
            assert re.search(rf"\b{cls}\b", corpus), f"{name} class {cls!r} never appears in captions"


# ------------------------------------------------------------------ rendering

def _single(shape: str = "square", colour: str = "red", size: str = "large", **kw) -> sw.Scene:
    return sw.Scene((sw.ShapeObject(shape, colour, size, 0.5, 0.5, **kw),), background=(90, 90, 90))


def test_colours_render_as_named() -> None:
    assert len(sw.COLOURS) >= 8
    for name, rgb in sw.COLOURS.items():
        img = np.asarray(sw.render(_single(colour=name), 64)).astype(int)
        assert np.abs(img[32, 32] - rgb).max() <= 2, name
    for (a, ra), (b, rb) in itertools.combinations(sw.COLOURS.items(), 2):
        assert np.linalg.norm(np.subtract(ra, rb)) > 80, (a, b)


def test_shapes_render_distinguishably() -> None:
    assert len(sw.SHAPES) >= 8
    # Coverage of a small yellow shape at 32 px, read from the blue channel (bg 90, yellow 40).
    cover = {s: (90 - np.asarray(sw.render(_single(s, "yellow", "small"), 32))[..., 2].astype(float)) / 50
             for s in sw.SHAPES}
    for s, c in cover.items():
        assert c.sum() > 25, f"{s} barely visible at 32 px"
    for a, b in itertools.combinations(sw.SHAPES, 2):
        diff = np.abs(cover[a] - cover[b]).sum()
        assert diff >= 0.3 * min(cover[a].sum(), cover[b].sum()), (a, b, diff)


def test_size_and_texture_are_visible() -> None:
    small, large = (np.asarray(sw.render(_single(size=s), 64))[..., 1] < 70 for s in sw.SIZES)
    assert large.sum() > 2 * small.sum()
    plain = np.asarray(sw.render(_single(), 64))
    for tex in sw.TEXTURES[1:]:
        assert (np.asarray(sw.render(_single(texture=tex), 64)) != plain).any(axis=2).sum() > 100, tex


def test_sample_scene_respects_constraints() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = sw.sample_scene(rng, n_objects=4, colour="blue")
        assert len(scene.objects) == 4 and {o.colour for o in scene.objects} == {"blue"}
        for a, b in itertools.combinations(scene.objects, 2):
            assert np.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius, "objects overlap"
        for o in scene.objects:
            assert o.radius <= o.x <= 1 - o.radius and o.radius <= o.y <= 1 - o.radius
    counts = {len(s.objects) for s in sw.stream_scenes(0, 100, "images")}
    assert counts == {1, 2, 3, 4}


def test_bad_input_is_named() -> None:
    scene = _scenes(1)[0]
    with pytest.raises(ValueError, match="style"):
        sw.render(scene, 32, style="watercolour")
    with pytest.raises(ValueError, match="size"):
        sw.render(scene, 4)
    with pytest.raises(ValueError, match="colour"):
        sw.ShapeObject("star", "mauve", "small", 0.5, 0.5)
    with pytest.raises(ValueError, match="region"):
        sw.sample_scene(np.random.default_rng(0), n_objects=2, region="left")
    with pytest.raises(ValueError, match="stream"):
        sw.stream_scenes(0, 1, "audio")
    with pytest.raises(ValueError, match="n must"):
        sw.sentence_stream(0, -3)
    with pytest.raises(ValueError, match="shift"):
        eval_suite(0, 1, 32, shift="cartoon")
    with pytest.raises(ValueError, match="task"):
        eval_suite(0, 1, 32, tasks=["texture-ish"])


# ------------------------------------------------------------------ streams

def test_streams_are_independent() -> None:
    images = list(sw.stream_scenes(11, 300, "images"))
    sentences = list(sw.sentence_stream(11, 300))
    paired = list(sw.stream_scenes(11, 300, "paired"))
    assert images != paired

    def true_of(text: str, scene: sw.Scene) -> bool:
        try:
            check_caption(text, scene)
        except AssertionError:
            return False
        return True

    # Sentence i is about its own scene, not about image i of the same seed.
    assert np.mean([true_of(t, s) for t, s in zip(sentences, images)]) < 0.3
    rng = np.random.default_rng(0)
    assert all(true_of(sw.caption(s, rng), s) for s in images[:50])


def test_paired_samples_match() -> None:
    pairs = list(sw.paired_samples(4, 20, 32))
    scenes = list(sw.stream_scenes(4, 20, "paired"))
    for (img, text), scene in zip(pairs, scenes):
        assert img.tobytes() == sw.render(scene, 32).tobytes()
        check_caption(text, scene)
    arr, texts = sw.paired_arrays(4, 20, 32)
    assert arr.shape == (20, 32, 32, 3) and texts == [t for _, t in pairs]
    assert arr[3].tobytes() == pairs[3][0].tobytes()


# ------------------------------------------------------------------ eval suite

_TRUTH = {
    "shape": lambda s: s.objects[0].shape if len(s.objects) == 1 else None,
    "colour": lambda s: s.objects[0].colour if len(s.objects) == 1 else None,
    "count": lambda s: sw.NUMBER_WORDS[len(s.objects) - 1] + (" shape" if len(s.objects) == 1 else " shapes"),
    "position": lambda s: (sw.POSITION_PHRASES[next(iter(s.objects[0].regions))]
                           if len(s.objects) == 1 and len(s.objects[0].regions) == 1 else None),
    "size": lambda s: s.objects[0].size if len(s.objects) == 1 else None,
}


def test_eval_tasks_are_balanced_and_unambiguous() -> None:
    suite = eval_suite(0, 6, 32)
    assert [t.name for t in suite] == list(TASKS) and len(suite) >= 5
    for task in suite:
        k = len(task.classnames)
        assert k >= 2 and len(set(task.classnames)) == k
        assert len(task.templates) >= 3 and all(t.count("{}") == 1 for t in task.templates)
        assert np.array_equal(np.bincount(task.labels, minlength=k), np.full(k, 6))
        assert len(task.images) == len(task.scenes) == 6 * k
        assert all(im.size == (32, 32) for im in task.images)
        for scene, label in zip(task.scenes, task.labels):
            assert _TRUTH[task.name](scene) == task.classnames[label], task.name
        prompts = task.prompts()
        assert len(prompts) == k and prompts[0][0] == task.templates[0].format(task.classnames[0])
    assert set(task_spec("shape")[0]) == set(sw.SHAPES) and set(task_spec("colour")[0]) == set(sw.COLOURS)


def test_eval_suite_is_deterministic() -> None:
    a, b = eval_suite(3, 2, 32, tasks=["count"]), eval_suite(3, 2, 32, tasks=["count"])
    assert np.array_equal(a[0].labels, b[0].labels)
    assert [i.tobytes() for i in a[0].images] == [i.tobytes() for i in b[0].images]


@pytest.mark.parametrize("shift", sw.SHIFTS)
def test_shifts_change_images_keep_labels(shift: str) -> None:
    plain, shifted = eval_suite(1, 3, 32), eval_suite(1, 3, 32, shift=shift)
    for p, s in zip(plain, shifted):
        assert s.shift == shift and s.key == f"{p.name}-{shift}"
        assert np.array_equal(p.labels, s.labels) and p.scenes == s.scenes
        assert all(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() > 5
                   for a, b in zip(p.images, s.images))


def test_retrieval_captions_are_distinct_and_true() -> None:
    rset = retrieval_set(2, 60, 32)
    assert len(rset.images) == len(rset.captions) == len(rset.scenes) == 60
    assert len(set(rset.captions)) == 60
    for text, scene in zip(rset.captions, rset.scenes):
        check_caption(text, scene)
        # Full captions name every object's colour and shape.
        for o in scene.objects:
            assert o.colour in text and (o.shape in text), text


# ------------------------------------------------------------------ files

@pytest.mark.parametrize("image_format", ["folder", "tar"])
def test_write_shapes_world(tmp_path: Path, image_format: str) -> None:
    files = write_shapes_world(tmp_path, n_images=7, n_sentences=11, image_size=32, seed=5,
                               image_format=image_format, shard_size=3, n_per_class=2, n_retrieval=5)
    expected = [np.asarray(im) for im in sw.image_stream(5, 7, 32)]
    if image_format == "folder":
        assert len(files.images) == 7 and len({p.parent for p in files.images}) == 3
        got = [np.asarray(Image.open(p).convert("RGB")) for p in files.images]
    else:
        assert [p.name for p in files.images] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
        got = []
        for shard in files.images:
            with tarfile.open(shard) as tar:
                for m in tar.getmembers():
                    assert re.fullmatch(r"\d{8}\.png", m.name)
                    got.append(np.asarray(Image.open(tar.extractfile(m)).convert("RGB")))
    assert len(got) == 7 and all(np.array_equal(a, b) for a, b in zip(got, expected))

    assert files.sentences.read_text().splitlines() == list(sw.sentence_stream(5, 11))
    assert len(files.eval_tasks) == len(TASKS) * (1 + len(sw.SHIFTS))
    for task_dir in files.eval_tasks:
        meta = json.loads((task_dir / "task.json").read_text())
        assert meta["templates"] and len(meta["classnames"]) == len(meta["folders"])
        for folder in meta["folders"]:
            pngs = sorted((task_dir / folder).glob("*.png"))
            assert len(pngs) == 2 and Image.open(pngs[0]).size == (32, 32)
    records = [json.loads(line) for line in files.retrieval_captions.read_text().splitlines()]
    assert len(records) == 5 and all((files.retrieval_captions.parent / r["image"]).is_file() for r in records)
    assert not list(tmp_path.rglob(".*.tmp")), "temporary files left behind"


def test_write_is_reproducible_and_validated(tmp_path: Path) -> None:
    kw = dict(n_images=4, n_sentences=2, image_size=16, seed=1, image_format="tar", n_per_class=1,
              n_retrieval=1, shifts=())
    a, b = write_shapes_world(tmp_path / "a", **kw), write_shapes_world(tmp_path / "b", **kw)
    assert hashlib.sha256(a.images[0].read_bytes()).digest() == hashlib.sha256(b.images[0].read_bytes()).digest()
    with pytest.raises(ValueError, match="image_format"):
        write_shapes_world(tmp_path, n_images=1, n_sentences=1, image_format="zip")
    with pytest.raises(ValueError, match="n_images"):
        write_shapes_world(tmp_path, n_images=-1, n_sentences=1)
