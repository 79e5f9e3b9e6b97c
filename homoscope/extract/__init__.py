"""The probe runner and the representation store.

- :func:`extract`: pooled hidden states ``[L+1, n, d]`` of one model for a list of texts.
- :class:`RepresentationStore`: atomic, fingerprint-keyed on-disk cache of those stacks.
"""
from .runner import (
    POOLINGS,
    ExtractStats,
    NonFiniteHiddenStateError,
    extract,
    make_batches,
    pool_weights,
    suggested_batch_tokens,
)
from .store import RepresentationStore, fingerprint_key

__all__ = [
    "POOLINGS",
    "ExtractStats",
    "NonFiniteHiddenStateError",
    "RepresentationStore",
    "extract",
    "fingerprint_key",
    "make_batches",
    "pool_weights",
    "suggested_batch_tokens",
]
