"""The probe runner, word alignment and the representation store.

- :func:`extract`: pooled hidden states ``[L+1, n, d]`` of one model for a list of texts.
- :func:`extract_rows`: several rows per text, each pooled over a group of tokens (words, tokens).
- :mod:`homoscope.extract.words`: words as character spans, the token -> word map from offsets,
  the word and token plans shared by all models of a study.
- :func:`outlier_report`: per layer, top-dimension variance share and the largest-norm row.
- :class:`RepresentationStore`: atomic, fingerprint-keyed on-disk cache of those stacks.
"""
from .outliers import OutlierMoments, outlier_report
from .runner import (
    POOLINGS,
    ExtractStats,
    ExtractionMemoryError,
    NonFiniteHiddenStateError,
    effective_max_length,
    extract,
    extract_rows,
    make_batches,
    pool_weights,
    suggested_batch_tokens,
)
from .store import RepresentationStore, fingerprint_key
from .words import (
    PUNCTUATION,
    ROW_POOLINGS,
    TokenPlan,
    WordPlan,
    encode_tokens,
    encode_words,
    plan_tokens,
    plan_words,
    split_words,
    word_groups,
    word_map,
)

__all__ = [
    "POOLINGS",
    "PUNCTUATION",
    "ROW_POOLINGS",
    "ExtractStats",
    "ExtractionMemoryError",
    "NonFiniteHiddenStateError",
    "RepresentationStore",
    "TokenPlan",
    "WordPlan",
    "effective_max_length",
    "encode_tokens",
    "encode_words",
    "extract",
    "extract_rows",
    "fingerprint_key",
    "make_batches",
    "OutlierMoments",
    "outlier_report",
    "plan_tokens",
    "plan_words",
    "pool_weights",
    "split_words",
    "suggested_batch_tokens",
    "word_groups",
    "word_map",
]
