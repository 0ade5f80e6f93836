"""The teacher-embedding cache: computed once, sharded .npy rows plus a JSON manifest.

``build_cache(teacher, audio_dir)`` writes or updates it (see :mod:`.builder`);
``EmbeddingCache(folder)`` reads it (see :mod:`.reader`); the layout is in :mod:`.layout`.
"""
from .builder import DEFAULT_ROOT, build_cache
from .reader import EmbeddingCache, Segment, resolve_cache_dir

__all__ = ["build_cache", "EmbeddingCache", "Segment", "DEFAULT_ROOT", "resolve_cache_dir"]
