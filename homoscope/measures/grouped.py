"""Exact group bootstrap of the streamed measures: per-group sums, each replicate a weighted merge.

A bootstrap replicate that draws whole groups (documents, or bundles of consecutive documents) with
replacement holds every row of group ``g`` as often as ``g`` was drawn (``w_g`` times). Every sum kept by
:class:`~homoscope.measures.streaming.CrossMoments` is a sum over rows, so once all groups' sums are
expressed at one shift, the replicate's sums are ``sum_g w_g S_g`` and ``n = sum_g w_g n_g``; its measure
is then computed from those sums exactly as on the resampled rows (the rows of each drawn group
repeated), and no resampled data are formed (the cluster bootstrap of Davison & Hinkley 1997, sec. 3.8).

Memory is ``G`` copies of the accumulator's sums (``G`` groups) plus one batch of replicates' sums;
stream fewer layers at a time when that is too much.

Example::

    acc = GroupedMoments(32, debiased=True, precision="float32")
    for x, y, g in chunks:                 # [La, m, da], [Lb, m, db], group of each row [m] (0 .. 31)
        acc.update(x, y, g)
    W = bootstrap_weights(32, 100, seed=0)  # [100, 32] counts of each group per replicate
    reps = acc.replicates(["linear_cka"], W)["linear_cka"]   # [100, La, Lb]
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

from ._validate import shape_pair
from .streaming import F64, STREAMING_MEASURES, CrossMoments


class GroupedMoments:
    """One :class:`CrossMoments` per group of rows, stored side by side, for exact group bootstraps.

    Args:
        n_groups: number of groups ``G`` (>= 1); rows carry group ids ``0 .. G-1``.
        debiased, precision: as for :class:`CrossMoments` (every group uses the same).

    Attributes:
        n: rows seen so far; ``group_n``: rows per group ``[G]`` (int64).

    Raises:
        ValueError: ``n_groups`` not a positive integer, and the errors of :class:`CrossMoments`.
    """

    def __init__(self, n_groups: int, *, debiased: bool = True, precision: str = "float32"):
        if type(n_groups) is not int or n_groups < 1:
            raise ValueError(f"n_groups must be a positive integer; got n_groups={n_groups!r}")
        self.parts = [CrossMoments(debiased=debiased, precision=precision) for _ in range(n_groups)]
        self._workspace: dict = {}  # one block workspace for all groups (they update one at a time)
        self._stacked: dict[str, torch.Tensor] = {}
        self._shifted_together = False

    @property
    def n(self) -> int:
        return sum(p.n for p in self.parts)

    @property
    def group_n(self) -> torch.Tensor:
        return torch.tensor([p.n for p in self.parts], dtype=torch.int64)

    def update(self, x: Any, y: Any, group: Any) -> "GroupedMoments":
        """Add a chunk: ``x [La, m, da]``, ``y [Lb, m, db]``, ``group [m]`` (integer ids in ``0 .. G-1``).

        Raises:
            ValueError: ``group`` not one integer id per row in range, and the errors of
                :meth:`CrossMoments.update`.
        """
        xs, ys = shape_pair(x, y)
        ids = torch.as_tensor(group)
        if ids.ndim != 1 or ids.shape[0] != xs.shape[1] or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"group must give one integer id per row (length {xs.shape[1]}); "
                             f"got shape {tuple(ids.shape)}, dtype {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.parts)):
            raise ValueError(f"group ids must lie in 0 .. {len(self.parts) - 1}; got {int(ids.min())} .. {int(ids.max())}")
        ids = ids.to(xs.device)
        for g in torch.unique(ids).tolist():
            rows = (ids == g).nonzero().flatten()
            first, last = int(rows[0]), int(rows[-1])
            part = (slice(first, last + 1),) if last - first + 1 == rows.numel() else (rows,)
            self._update_part(g, xs[(slice(None),) + part], ys[(slice(None),) + part])
        self._shifted_together = False
        return self

    def _update_part(self, g: int, x: torch.Tensor, y: torch.Tensor) -> None:
        acc = self.parts[g]
        acc._ws = self._workspace
        fresh = acc.n == 0
        acc.update(x, y)
        if fresh:  # move the new group's sums into the side-by-side storage
            if not self._stacked:
                self._stacked = {k: torch.zeros((len(self.parts),) + t.shape, dtype=F64, device=t.device)
                                 for k, t in acc._sums.items()}
            for k, t in acc._sums.items():
                self._stacked[k][g].copy_(t)
                acc._sums[k] = self._stacked[k][g]

    def _shift_together(self) -> None:
        """Express every group's sums at one shift (the row-weighted mean of the groups' shifts)."""
        if self._shifted_together:
            return
        live = [p for p in self.parts if p.n]
        total = sum(p.n for p in live)
        cx = sum(p._cx * (p.n / total) for p in live)
        cy = sum(p._cy * (p.n / total) for p in live)
        for p in live:
            p._move_shift(cx.clone(), cy.clone())
        self._cx, self._cy = cx, cy
        self._shifted_together = True

    def merged(self) -> CrossMoments:
        """The sums of all rows, every group once, as one :class:`CrossMoments` (its ``compute`` raises as usual).

        Raises:
            ValueError: an empty accumulator.
        """
        if not self._stacked:
            raise ValueError("the accumulator is empty (n=0); call update() first")
        self._shift_together()
        ref = next(p for p in self.parts if p.n)
        sums = {k: t.sum(0) for k, t in self._stacked.items()}
        return _from_sums(ref, sums, self._cx, self._cy, self.n, sum(p.f32_rows for p in self.parts))

    def replicates(self, names: Sequence[str], W: Any, *, memory_mb: int = 256,
                   options: dict | None = None) -> dict[str, torch.Tensor]:
        """Each measure on each replicate given by group counts ``W [R, G]``: ``{name: [R, La, Lb]}`` float64.

        Row ``r`` of ``W`` says how often each group is drawn in replicate ``r`` (``torch.ones(1, G)`` is
        the sample itself). A replicate whose measure is undefined (a constant layer, too few rows) is NaN.
        Replicates' sums are formed ``memory_mb`` MiB at a time.

        Raises:
            ValueError: ``W`` not ``[R, G]`` finite and non-negative, a name without a streaming form,
                an empty accumulator.
        """
        W = torch.as_tensor(W, dtype=F64)
        G = len(self.parts)
        if W.ndim != 2 or W.shape[1] != G or not bool(torch.isfinite(W).all()) or bool((W < 0).any()):
            raise ValueError(f"W must be finite non-negative counts of shape [R, {G}]; got shape {tuple(W.shape)}")
        for name in names:
            if name not in STREAMING_MEASURES:
                raise ValueError(f"no streaming form for measure {name!r}; streaming measures: "
                                 f"{', '.join(STREAMING_MEASURES)}")
        if not self._stacked:
            raise ValueError("the accumulator is empty (n=0); call update() first")
        self._shift_together()
        dev = next(iter(self._stacked.values())).device
        W = W.to(dev)
        per = sum(t[0].numel() for t in self._stacked.values())
        batch = max(1, int(memory_mb) * 2**20 // (8 * per))
        ref = next(p for p in self.parts if p.n)
        counts = torch.tensor([float(p.n) for p in self.parts], dtype=F64, device=dev)
        f32 = torch.tensor([float(p.f32_rows) for p in self.parts], dtype=F64, device=dev)
        out = {m: torch.full((W.shape[0], ref._dims.La, ref._dims.Lb), float("nan"), dtype=F64) for m in names}
        for start in range(0, W.shape[0], batch):
            Wb = W[start : start + batch]
            sums = {k: (Wb @ t.view(G, -1)).view((Wb.shape[0],) + t.shape[1:]) for k, t in self._stacked.items()}
            for r in range(Wb.shape[0]):
                acc = _from_sums(ref, {k: s[r] for k, s in sums.items()}, self._cx, self._cy,
                                 int(round(float(Wb[r] @ counts))), int(round(float(Wb[r] @ f32))))
                for m in names:
                    out[m][start + r] = _measure(acc, m, (options or {}).get(m, {}))
        return out


def _from_sums(ref: CrossMoments, sums: dict, cx: torch.Tensor, cy: torch.Tensor, n: int, f32_rows: int) -> CrossMoments:
    """A :class:`CrossMoments` holding the given sums (at shifts ``cx``, ``cy``) of ``n`` rows."""
    acc = CrossMoments(debiased=ref.debiased, precision=ref.precision)
    acc._dims, acc._device = ref._dims, ref._device
    acc._cx, acc._cy, acc._sums = cx, cy, sums
    acc.n, acc.f32_rows = n, f32_rows
    return acc


def _measure(acc: CrossMoments, name: str, options: dict) -> torch.Tensor:
    """The measure on one replicate; NaN where it is undefined there (a resample with a constant layer)."""
    if acc.n == 0:
        return torch.full((acc._dims.La, acc._dims.Lb), float("nan"), dtype=F64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return acc.compute(name, **options).cpu()
    except ValueError:
        return torch.full((acc._dims.La, acc._dims.Lb), float("nan"), dtype=F64)
