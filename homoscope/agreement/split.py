"""Train/test splits by document, so that no article feeds both sides of a probe."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from ..measures._validate import as_labels


def _check_fraction(test_size: float) -> float:
    try:
        t = float(test_size)
    except (TypeError, ValueError):
        raise ValueError(f"test_size={test_size!r} must be a number strictly between 0 and 1") from None
    if not 0.0 < t < 1.0:
        raise ValueError(f"test_size={test_size!r} must be strictly between 0 and 1 (a share of the rows)")
    return t


def _check_split_args(
    docs: list, test_size: float, seed: int, labels: Sequence | None
) -> tuple[float, list | None]:
    """Validate the arguments of :func:`split_by_document`; return the test share and the labels as a list."""
    n = len(docs)
    if n == 0:
        raise ValueError("doc_ids is empty; give one document id per row")
    t = _check_fraction(test_size)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    if labels is not None:
        labels = as_labels(labels, "labels").tolist()
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries but doc_ids has {n}; give one label per row")
    return t, labels


def _document_rows(docs: list) -> tuple[dict, list]:
    """Group row positions by document; return ``({doc: [rows]}, documents in order of first appearance)``.

    Raises ValueError for fewer than two distinct documents.
    """
    rows: dict = defaultdict(list)
    for i, d in enumerate(docs):
        rows[d].append(i)
    order = sorted(rows, key=lambda d: rows[d][0])  # first appearance: independent of hash order
    if len(order) < 2:
        raise ValueError(
            f"doc_ids holds {len(order)} distinct document(s); a split by document needs at least two"
        )
    return rows, order


def _strata(order: list, rows: dict, labels: list | None) -> dict:
    """File each document under its majority label (ties: smallest as a string); one stratum ``None`` without labels."""
    strata: dict = defaultdict(list)
    if labels is None:
        strata[None] = order
    else:
        for d in order:
            counts = Counter(labels[i] for i in rows[d])
            top = max(counts.values())
            strata[min(str(k) for k, c in counts.items() if c == top)].append(d)
    return strata


def _test_documents(strata: dict, rows: dict, t: float, seed: int) -> set:
    """Draw each stratum's test documents until they hold ``round(t * rows)`` of its rows.

    Takes ``{stratum: [doc, ...]}``, ``{doc: [rows]}``, the test share and the seed; returns the test documents.
    """
    rng = np.random.default_rng(int(seed))
    test_docs: set = set()
    for key in sorted(strata, key=lambda k: "" if k is None else k):
        members = strata[key]
        perm = rng.permutation(len(members))
        if len(members) < 2:
            continue  # a lone document stays on the training side
        total = sum(len(rows[d]) for d in members)
        target = max(1, round(t * total))
        taken = 0
        for j in perm[:-1]:  # at least one document of every stratum stays for training
            if taken >= target:
                break
            d = members[j]
            test_docs.add(d)
            taken += len(rows[d])
    return test_docs


def split_by_document(
    doc_ids: Sequence,
    test_size: float = 0.3,
    seed: int = 0,
    *,
    labels: Sequence | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into train and test so that every document lies wholly on one side.

    Documents are shuffled with ``numpy.random.default_rng(seed)`` and moved to the test side until
    it holds at least ``round(test_size * rows)`` rows (so the realised share can exceed
    ``test_size`` by up to one document's rows), taking at least one document and leaving at least
    one for training. With ``labels``, the split is stratified: each document is filed under the
    most frequent label among its rows (ties: the smallest label as a string), and each such stratum
    is split on its own, so every label with at least two documents appears on both sides; a label
    with a single document stays on the training side. Deterministic for a given
    ``(doc_ids, test_size, seed, labels)``.

    Args:
        doc_ids: n document ids (strings or numbers), one per row; rows of one document share it.
        test_size: share of rows for the test side, strictly between 0 and 1.
        seed: shuffling seed (int >= 0).
        labels: optional n labels for a stratified split.

    Returns:
        ``(train_idx, test_idx)``: sorted int64 arrays of row positions; disjoint, covering
        ``range(n)``, both non-empty, and no document id occurs in both.

    Raises:
        ValueError: ``doc_ids`` or ``labels`` not one string or number per row (None, a string, a ragged
            list, a missing entry: :func:`~homoscope.measures._validate.as_labels`; the message names the
            argument), empty ``doc_ids``, ``labels`` of another length, ``test_size`` outside (0, 1),
            a negative seed, fewer than two documents, or a split that would leave one side empty.
    """
    docs = as_labels(doc_ids, "doc_ids", "document ids").tolist()
    t, labels = _check_split_args(docs, test_size, seed, labels)
    rows, order = _document_rows(docs)
    test_docs = _test_documents(_strata(order, rows, labels), rows, t, seed)
    n = len(docs)
    test = np.array(sorted(i for d in test_docs for i in rows[d]), dtype=np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), test)
    if test.size == 0 or train.size == 0:
        side = "test" if test.size == 0 else "train"
        raise ValueError(
            f"split_by_document with test_size={test_size} leaves the {side} side empty "
            f"({len(order)} documents, {n} rows); change test_size or give more documents"
        )
    return train, test
