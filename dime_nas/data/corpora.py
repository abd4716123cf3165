"""The corpus readers in one place: images and sentences as separate, unpaired,
deterministic, restartable streams (``start=``) that describe themselves with
``identity()`` for cache invalidation.

Images come from ``image_corpus`` (folders, ``.tar`` shards, list files), sentences from
``sentence_corpus`` (``.txt``/``.csv``/``.tsv``/``.parquet``/``.jsonl``); what both share
(the skip log, file stamps, path specs) is in ``corpus_base``.
"""
from __future__ import annotations

from .corpus_base import SkipLog, expand_paths
from .image_corpus import (IMAGE_EXTENSIONS, LIST_SUFFIXES, ImageFolder, ImageList, ImageSource, RawImage, TarShards,
                           decode_image, open_image_corpus)
from .sentence_corpus import SENTENCE_FORMATS, SentenceFiles, SentenceSource, TextRecord, open_sentence_corpus

__all__ = ["IMAGE_EXTENSIONS", "LIST_SUFFIXES", "SENTENCE_FORMATS", "ImageFolder", "ImageList", "ImageSource",
           "RawImage", "SentenceFiles", "SentenceSource", "SkipLog", "TarShards", "TextRecord", "decode_image",
           "expand_paths", "open_image_corpus", "open_sentence_corpus"]
