"""The teacher-feature cache: the teacher embeds every image and sentence once, students
train and are scored from it without the teacher.

``layout``: the folder's files, its manifest and what it was built for; ``build``: the
resumable build; ``read``: ``FeatureCache``, the memory-mapped reader.
"""
from .build import EvalLeakError, build_cache, eval_file_hashes, split_scores, to_pixel_store
from .layout import CACHE_VERSION, CacheError, cache_identity, cache_mismatch
from .read import SPLITS, CachedRetrieval, CachedTask, ChunkedArray, FeatureCache, open_complete_cache

__all__ = ["CACHE_VERSION", "SPLITS", "CacheError", "CachedRetrieval", "CachedTask", "ChunkedArray", "EvalLeakError",
           "FeatureCache", "build_cache", "cache_identity", "cache_mismatch", "eval_file_hashes",
           "open_complete_cache", "split_scores", "to_pixel_store"]
