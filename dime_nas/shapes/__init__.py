"""ShapesWorld: the built-in world of coloured shapes, its captions, tasks and demo teacher.

The demo and the tests need images, sentences, labelled evaluation data and a teacher
without downloading anything; ShapesWorld makes them all from a seed.

    scene.py     Scene, ShapeObject, the vocabularies, sample_scene
    render.py    render, render_batch (plain and shifted styles)
    captions.py  caption, describe (sentences true of a scene)
    streams.py   seeded image / sentence / paired streams
    tasks.py     the zero-shot evaluation suite and the retrieval set
    files.py     write_shapes_world: all of it as real files on disk
    teacher.py   the demo teacher (imports torch; load it as ``dime_nas.shapes.teacher``)
"""
from __future__ import annotations

from .captions import caption, describe
from .files import WorldFiles, write_shapes_world
from .render import SHIFTS, STYLES, render, render_batch
from .scene import (COLOURS, MAX_OBJECTS, NUMBER_WORDS, POSITION_PHRASES, REGIONS, SHAPES, SIZES, TEXTURES, Scene,
                    ShapeObject, sample_scene)
from .streams import STREAMS, image_stream, paired_arrays, paired_samples, sentence_stream, stream_scenes
from .tasks import TASKS, EvalTask, RetrievalSet, eval_suite, retrieval_set, task_spec

__all__ = ["COLOURS", "MAX_OBJECTS", "NUMBER_WORDS", "POSITION_PHRASES", "REGIONS", "SHAPES", "SHIFTS", "SIZES",
           "STREAMS", "STYLES", "TASKS", "TEXTURES", "EvalTask", "RetrievalSet", "Scene", "ShapeObject", "WorldFiles",
           "caption", "describe", "eval_suite", "image_stream", "paired_arrays", "paired_samples", "render",
           "render_batch", "retrieval_set", "sample_scene", "sentence_stream", "stream_scenes", "task_spec",
           "write_shapes_world"]
