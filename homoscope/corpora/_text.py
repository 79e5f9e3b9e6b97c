"""Text hygiene shared by the corpus loaders: whitespace, the sentence-keeping rule, sampling."""
from __future__ import annotations

import operator
import re
import unicodedata
import warnings

import numpy as np

#: Fewest and most whitespace-separated words a kept sentence may have.
MIN_WORDS = 5
MAX_WORDS = 60

#: The rule that decides which split sentences are kept, in words; stored in every corpus's meta.
SENTENCE_RULE = (
    "keep a sentence when it has 5 to 60 whitespace-separated words, contains a letter, ends with "
    "sentence-final punctuation (. ! ? or an ellipsis, optionally followed by closing quotes or "
    "brackets), and does not start with a word that has no capital letter (a cut-off sentence such "
    "as 'mobi was sponsored ...'; 'iPod' or 'eBay' pass); article titles are headings and are never "
    "kept; of identical sentences (after whitespace normalisation) only the first in corpus order is kept"
)

_FINAL = re.compile(r"[.!?\u2026][\s\"'\u201d\u2019)\]]*$")
_OPENERS = "\"'\u201c\u2018([-\u2013\u2014 "


def normalise(text: str) -> str:
    """Return ``text`` in Unicode NFC with every run of whitespace turned into one space, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def fragment_reason(sentence: str) -> str | None:
    """Say why a whitespace-normalised sentence is a fragment under :data:`SENTENCE_RULE`.

    Returns None for a sentence that is kept, else one of ``'no_letters'``, ``'too_short'``,
    ``'too_long'``, ``'no_final_punctuation'`` (headings, datelines, score lines, table rows) or
    ``'lowercase_start'``. Duplicates are judged by the caller, which sees the whole corpus.
    """
    if not any(ch.isalpha() for ch in sentence):
        return "no_letters"
    words = sentence.split()
    if len(words) < MIN_WORDS:
        return "too_short"
    if len(words) > MAX_WORDS:
        return "too_long"
    if not _FINAL.search(sentence):
        return "no_final_punctuation"
    first = sentence.lstrip(_OPENERS).split(" ", 1)[0]
    if first[:1].islower() and not any(ch.isupper() for ch in first):
        return "lowercase_start"
    return None


def check_count(sentences, what: str = "sentences") -> int | None:
    """Validate a requested number of rows: None (all) or a positive int. Raises ValueError."""
    if sentences is None:
        return None
    if isinstance(sentences, bool):
        raise ValueError(f"{what}={sentences!r} is not a count; give a positive whole number or None for all")
    try:
        k = operator.index(sentences)
    except TypeError:
        raise ValueError(
            f"{what}={sentences!r} is not a whole number; give a positive whole number or None for all"
        ) from None
    if k < 1:
        raise ValueError(f"{what}={k} must be at least 1; give a positive whole number or None for all")
    return k


def check_seed(seed) -> int:
    """Validate a sampling seed: a whole number >= 0. Raises ValueError."""
    if isinstance(seed, bool):
        raise ValueError(f"seed={seed!r} is not a whole number; give an integer >= 0")
    try:
        s = operator.index(seed)
    except TypeError:
        raise ValueError(f"seed={seed!r} is not a whole number; give an integer >= 0") from None
    if s < 0:
        raise ValueError(f"seed={s} is negative; give an integer >= 0")
    return s


def sample_indices(available: int, sentences: int | None, seed: int, name: str) -> tuple[list[int], bool]:
    """Choose which of ``available`` rows to keep; return (sorted row indices, whether it sampled).

    ``sentences=None`` or ``sentences == available`` keeps every row. Fewer rows are drawn without
    replacement with ``numpy.random.default_rng(seed).choice`` and returned in corpus order, so the
    same (corpus, sentences, seed) always yields the same rows. More rows than available keeps all
    of them and says so with a ``UserWarning`` (not an error).
    """
    if sentences is None or sentences == available:
        return list(range(available)), False
    if sentences > available:
        warnings.warn(
            f"corpus {name!r}: {sentences} sentences requested but only {available} are available "
            f"after filtering; using all {available}",
            UserWarning,
            stacklevel=3,
        )
        return list(range(available)), False
    rng = np.random.default_rng(seed)
    chosen = rng.choice(available, size=sentences, replace=False)
    return sorted(int(i) for i in chosen), True
