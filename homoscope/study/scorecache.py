"""Scores kept per model pair, like representations: a run killed while scoring loses at most the pair in
flight, and the rerun recomputes only the pairs not finished.

A pair's tidy rows (every measure, both directions of an asymmetric one, with controls) are one store entry
named ``scores``: the numeric columns as a float64 tensor ``[1, rows, columns]`` and the text columns as
codes into lists kept in the entry's record, with each column's dtype, so that the frame read back equals
the one computed, bit for bit. The key hashes what the numbers depend on: the store keys (and kept rows) of
the two models' stacks and of their random-init controls, the measures, every scoring option, the
bootstrap groups and the homoscope version. Stacks held in memory have no store identity and are never
cached.
"""
from __future__ import annotations

import builtins
import hashlib
import json

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..extract.store import fingerprint_key
from .shards import ShardedStack

#: The store name of score entries.
SCORES = "scores"


def stack_identity(stack) -> str | None:
    """A digest of a stored stack's entries and kept rows; None for a stack held in memory."""
    if not isinstance(stack, ShardedStack):
        return None
    h = hashlib.sha256(json.dumps([stack.name, list(stack.keys), list(stack.sizes)]).encode())
    if stack.keep is not None:
        h.update(np.ascontiguousarray(stack.keep, dtype=np.int64).tobytes())
    return h.hexdigest()


def groups_digest(groups) -> str | None:
    """A digest of the bootstrap group of each row (None: no groups)."""
    if groups is None:
        return None
    return hashlib.sha256(json.dumps([str(g) for g in groups]).encode()).hexdigest()


class ScoreCache:
    """Per-pair score entries in a :class:`~homoscope.extract.RepresentationStore`.

    Args:
        store: the store.
        options: everything of the scoring stage the numbers depend on (JSON-able), hashed into each key.
    """

    def __init__(self, store, options: dict):
        self.store = store
        self.options = {**options, "version": __version__}

    def key(self, a: str, b: str, stacks: tuple, measures: list[str]) -> str | None:
        """The key of pair ``(a, b)`` over ``stacks`` (X, Y and their controls, None where absent); None
        where a stack is held in memory."""
        ids = [stack_identity(s) if s is not None else "-" for s in stacks]
        if any(i is None for i in ids):
            return None
        return fingerprint_key(kind=SCORES, pair=[a, b], stacks=ids, measures=list(measures), **self.options)

    def get(self, key: str | None) -> tuple[pd.DataFrame, list[tuple[str, str]]] | None:
        """The pair's frame and the warnings its scoring raised (category name, message) where a whole,
        verified entry exists, else None."""
        got = self.store.get(SCORES, key) if key is not None else None
        if got is None:
            return None
        tensor, record = got
        try:
            return _frame_from(tensor, record), [(str(c), str(m)) for c, m in record.get("warnings", [])]
        except (KeyError, ValueError, TypeError, IndexError):
            return None

    def put(self, key: str | None, frame: pd.DataFrame, caught: list[tuple[str, str]] = ()) -> None:
        """Keep the pair's frame and warnings (no-op for a None key). Raises OSError where the store cannot be
        written."""
        if key is None:
            return
        tensor, record = _frame_to(frame)
        self.store.put(SCORES, key, tensor, {**record, "warnings": [list(w) for w in caught]})


def warning_category(name: str) -> type[Warning]:
    """The built-in warning class called ``name`` (RuntimeWarning for any other name)."""
    found = getattr(builtins, name, None)
    return found if isinstance(found, type) and issubclass(found, Warning) else RuntimeWarning


def _frame_to(frame: pd.DataFrame) -> tuple[torch.Tensor, dict]:
    columns, text, values = [], {}, []
    for col in frame.columns:
        s = frame[col]
        columns.append([col, str(s.dtype)])
        if s.dtype == object or pd.api.types.is_string_dtype(s):
            codes, uniques = pd.factorize(s, use_na_sentinel=True)
            text[col] = [str(u) for u in uniques]
            values.append(codes.astype(np.float64))
        else:
            values.append(s.to_numpy(dtype=np.float64, na_value=np.nan))
    data = np.stack(values, axis=1) if values else np.zeros((len(frame), 0))
    return torch.from_numpy(np.ascontiguousarray(data))[None], {"columns": columns, "text": text}


def _frame_from(tensor: torch.Tensor, record: dict) -> pd.DataFrame:
    data = tensor[0].numpy()
    cols = {}
    for j, (col, dtype) in enumerate(record["columns"]):
        v = data[:, j]
        if col in record["text"]:
            names = np.asarray(record["text"][col], dtype=object)
            codes = v.astype(np.int64)
            cols[col] = pd.Series(np.where(codes >= 0, names[np.maximum(codes, 0)], None), dtype=dtype)
        else:
            cols[col] = pd.Series(v).astype(dtype)
    return pd.DataFrame(cols)
