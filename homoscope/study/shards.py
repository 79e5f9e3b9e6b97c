"""Shards: a study's rows cut into runs of texts, and stacks read shard by shard.

A study cuts its corpus into shards of ``shard_size`` texts (for words and tokens: of at most
``shard_size`` rows, cut between texts) in corpus order; each model's
representations of a shard are one store entry (``[L+1, rows of the shard, d]``), written as soon as
the shard is extracted. A :class:`ShardedStack` is a model's whole stack as the list of its entries:
it holds no tensor, and reads one shard at a time (or only some layers of it) when scoring streams
through it. :class:`InMemoryStack` gives a tensor the same interface, so the scoring stage has one
path for both.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import torch


def shard_ranges(n_texts: int, shard_size: int, rows: list[int] | None = None) -> list[tuple[int, int]]:
    """Text ranges ``[(start, stop), ...]`` in corpus order: at most ``shard_size`` texts each, or, with
    ``rows`` (rows per text: words or tokens), at most ``shard_size`` rows each, cut between texts (a
    text with more rows than that is a shard of its own).

    Raises:
        ValueError: ``shard_size`` < 1, ``n_texts`` < 0, or ``rows`` of another length than ``n_texts``.
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size={shard_size!r} must be an integer >= 1")
    if n_texts < 0:
        raise ValueError(f"n_texts={n_texts!r} must be >= 0")
    if rows is None:
        return [(s, min(s + shard_size, n_texts)) for s in range(0, n_texts, shard_size)]
    if len(rows) != n_texts:
        raise ValueError(f"rows has {len(rows)} entries for n_texts={n_texts}")
    out, start, held = [], 0, 0
    for i, r in enumerate(rows):
        if held and r and held + r > shard_size:
            out.append((start, i))
            start, held = i, 0
        held += r
    if start < n_texts:
        out.append((start, n_texts))
    return out


def _local_keep(keep: np.ndarray | None, start: int, stop: int) -> torch.Tensor | None:
    """Indices, relative to ``start``, of the kept rows in ``[start, stop)`` (None: all rows)."""
    if keep is None:
        return None
    lo, hi = np.searchsorted(keep, [start, stop])
    return torch.from_numpy(keep[lo:hi] - start)


class _Rows:
    """What both stack kinds share: the kept rows, ``n``, and reads of a row subset."""

    keep: np.ndarray | None
    layers: int
    width: int

    @property
    def n(self) -> int:
        """Rows of the stack (after the keep mask)."""
        return self._total if self.keep is None else len(self.keep)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.layers, self.n, self.width)

    def rows(self, index: np.ndarray) -> torch.Tensor:
        """The rows ``index`` (sorted positions among the kept rows) of every layer: ``[L, k, d]`` float32."""
        index = np.asarray(index, dtype=np.int64)
        wanted = index if self.keep is None else self.keep[index]
        parts = []
        for (start, stop), part in self._parts(None):
            local = _local_keep(wanted, start, stop)
            if local is not None and local.numel():
                parts.append(part().index_select(1, local))
        return torch.cat(parts, dim=1) if parts else torch.empty(self.layers, 0, self.width)

    def chunks(self, layers: slice | None = None) -> Iterator[torch.Tensor]:
        """The kept rows in order, one shard at a time: ``[L', m, d]`` tensors (``layers`` selects L')."""
        for (start, stop), part in self._parts(layers):
            local = _local_keep(self.keep, start, stop)
            x = part()
            yield x if local is None else x.index_select(1, local)

    def load(self) -> torch.Tensor:
        """The whole stack of kept rows in memory: ``[L, n, d]``."""
        return torch.cat(list(self.chunks()), dim=1)

    def select(self, keep) -> "_Rows":
        """The same stack with only the rows ``keep`` (sorted indices among all stored rows)."""
        return replace(self, keep=None if keep is None else np.asarray(keep, dtype=np.int64))


@dataclass(frozen=True)
class InMemoryStack(_Rows):
    """A ``[L, n, d]`` tensor read in chunks of ``chunk_rows`` rows (the scoring stage's view of a tensor)."""

    tensor: torch.Tensor
    chunk_rows: int = 4096
    keep: np.ndarray | None = None

    @property
    def layers(self) -> int:
        return self.tensor.shape[0]

    @property
    def width(self) -> int:
        return self.tensor.shape[2]

    @property
    def _total(self) -> int:
        return self.tensor.shape[1]

    def _parts(self, layers):
        t = self.tensor if layers is None else self.tensor[layers]
        for start, stop in shard_ranges(self._total, self.chunk_rows):
            yield (start, stop), (lambda s=start, e=stop: t[:, s:e])


@dataclass(frozen=True)
class ShardedStack(_Rows):
    """A model's stack as store entries, one per shard, read on demand.

    Attributes:
        store: the :class:`~homoscope.extract.RepresentationStore`.
        name: the model's name in the store.
        keys: store key of each shard, in corpus order.
        sizes: rows of each shard.
        layers, width: L and d of every shard.
        keep: sorted indices of the rows kept among all stored rows (None: all).
    """

    store: object
    name: str
    keys: tuple
    sizes: tuple
    layers: int
    width: int
    keep: np.ndarray | None = None

    @property
    def _total(self) -> int:
        return int(sum(self.sizes))

    def _parts(self, layers):
        start = 0
        for key, size in zip(self.keys, self.sizes):
            yield (start, start + size), (lambda k=key: self.store.read(self.name, k, layers).float())
            start += size

