"""Exact group bootstrap of the streamed measures: per-group sums, each replicate a weighted merge.

A bootstrap replicate that draws whole groups (documents, or bundles of consecutive documents) with
replacement holds every row of group ``g`` as often as ``g`` was drawn (``w_g`` times). Every sum kept by
:class:`~homoscope.measures.streaming.CrossMoments` is a sum over rows, so once all groups' sums are
expressed at one shift, the replicate's sums are ``sum_g w_g S_g`` and ``n = sum_g w_g n_g``; its measure
is then computed from those sums exactly as on the resampled rows (the rows of each drawn group
repeated), and no resampled data are formed (the cluster bootstrap of Davison & Hinkley 1997, sec. 3.8).
``linear_cka`` and ``debiased_cka`` follow the in-memory bootstrap of :mod:`homoscope.measures.controls`
instead: two copies of one row are not compared with each other (otherwise the copies inflate both
estimators); their replicates come from the same sums weighted by the counts, their squares and cubes
(:meth:`GroupedMoments._cka_terms`, :func:`~homoscope.measures.controls.cka_from_terms`), and equal the
in-memory engine's replicates for the same row counts.

Precision: the groups' sums are re-expressed at one shift (the mean of all rows), so a replicate is as
accurate as a :class:`CrossMoments` whose rows sit at their distance from that mean: within 1e-10 where
the drawn groups' means lie within a few standard deviations of it (documents of one corpus); a group
offset by 1e3 standard deviations loses about 1e-5 in ``debiased_cka`` (fourth powers of the offset).

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

import numpy as np
import torch

from ._validate import as_numbers, column_range, shape_pair
from .controls import BootTerms, cka_from_terms
from .streaming import F64, CrossMoments, Dims, _chunk_dtype, _layer_units

# the CKA measures whose replicates follow the in-memory bootstrap (copies of a row not compared with
# each other; see homoscope.measures.controls), and their estimator
CKA_KINDS = {"linear_cka": "biased", "debiased_cka": "unbiased"}

# the largest count of one group in a replicate (counts beyond it are no bootstrap)
MAX_COUNT = 2**31


class GroupedMoments:
    """One :class:`CrossMoments` per group of rows, stored side by side, for exact group bootstraps.

    Args:
        n_groups: number of groups ``G`` (>= 1); rows carry group ids ``0 .. G-1``.
        debiased, precision: as for :class:`CrossMoments` (every group uses the same).
        means: optional column means of all rows ``(mx [La, da], my [Lb, db])`` (float64, e.g. from a first
            pass): every group's sums are kept at them from the start, so no group's sums are ever
            re-expressed (faster; each replicate's CKA terms need sums at the means).

    Attributes:
        n: rows seen so far; ``group_n``: rows per group ``[G]`` (int64).

    Raises:
        ValueError: ``n_groups`` not a positive integer, and the errors of :class:`CrossMoments`.
    """

    def __init__(self, n_groups: int, *, debiased: bool = True, precision: str = "float32", means=None):
        if type(n_groups) is not int or n_groups < 1:
            raise ValueError(f"n_groups must be a positive integer; got n_groups={n_groups!r}")
        self.parts = [CrossMoments(debiased=debiased, precision=precision) for _ in range(n_groups)]
        self._means = None if means is None else tuple(torch.as_tensor(m, dtype=F64) for m in means)
        for p in self.parts:
            p.fixed_shift = self._means is not None
        self._workspace: dict = {}  # one block workspace for all groups (they update one at a time)
        self._stacked: dict[str, torch.Tensor] = {}
        self._shifted_together = False
        self._dims: tuple | None = None

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
        dt = _chunk_dtype(x, y)
        xs, ys = shape_pair(x, y, names=("x", "y"))
        xs, ys = xs.to(dtype=dt), ys.to(dtype=dt)
        ids = _group_ids(group, xs.shape[1], len(self.parts))
        dims = (xs.shape[0], xs.shape[2], ys.shape[0], ys.shape[2])
        if self._dims is not None and dims != self._dims:
            raise ValueError(f"chunk shape disagrees with earlier chunks: (La, da, Lb, db)={dims}, expected {self._dims}")
        rx, ry = column_range(xs, "x"), column_range(ys, "y")  # the whole chunk is checked before any group takes rows
        self._dims = dims
        if self.parts[0].units is None:  # every group's rows in the same units, so that their sums add up
            units = (_layer_units(*rx), _layer_units(*ry))
            for p in self.parts:
                p.units = units
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
        if self._means is not None and not acc._sums:  # sums at the given means, in the side-by-side storage
            dims = Dims(x.shape[0], x.shape[2], y.shape[0], y.shape[2])
            want = ((dims.La, dims.da), (dims.Lb, dims.db))
            if tuple(tuple(m.shape) for m in self._means) != want:
                raise ValueError(f"means must have shapes {want[0]} and {want[1]}; got "
                                 f"{tuple(self._means[0].shape)} and {tuple(self._means[1].shape)}")
            self._allocate_stacked(dims, x.device, acc)
            acc._allocate(acc._dims, x.device, *self._scaled_means(x.device),
                          storage={k: t[g] for k, t in self._stacked.items()})
        fresh = acc.n == 0
        acc.update(x, y)
        if fresh and self._means is None:  # move the new group's sums into the side-by-side storage
            self._allocate_stacked(acc._dims, x.device, acc)
            for k, t in acc._sums.items():
                self._stacked[k][g].copy_(t)
                acc._sums[k] = self._stacked[k][g]

    def _scaled_means(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The given means in the groups' units (the rows' units, see :attr:`CrossMoments.units`)."""
        return tuple(m.to(device) * u.to(device)[:, None] for m, u in zip(self._means, self.parts[0].units))

    def _allocate_stacked(self, dims: Dims, device, acc: CrossMoments) -> None:
        acc._check_dims(dims)
        if not self._stacked:
            self._stacked = {s.name: torch.zeros((len(self.parts),) + s.shape(dims), dtype=F64, device=device)
                             for s in acc._declared}

    def _shift_together(self) -> None:
        """Express every group's sums at one shift: the column means of all rows (so the shifted rows are the
        centered rows the CKA bootstrap terms are written in)."""
        if self._shifted_together:
            return
        live = [p for p in self.parts if p.n]
        total = sum(p.n for p in live)
        # the means of all rows: each group's shift plus its shifted rows' sum
        cx = sum(p._cx * p.n + p.sx for p in live) / total
        cy = sum(p._cy * p.n + p.sy for p in live) / total
        means = self._scaled_means(cx.device) if self._means is not None else None
        given = means is not None and all(torch.equal(p._cx, means[0].to(p._cx)) and
                                          torch.equal(p._cy, means[1].to(p._cy)) for p in live)
        # given means that are not the rows' means (to rounding) would bias the CKA terms: move to the real ones
        given = given and all(bool(((c - m.to(c)).abs() <= 1e-9 * (1 + m.to(c).abs())).all())
                              for c, m in ((cx, means[0]), (cy, means[1])))
        if given:  # every group is at the given means already: moving them would cost O(sums) each
            cx, cy = live[0]._cx, live[0]._cy
        for p in live if not given else ():
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
        whole = _from_sums(ref, sums, self._cx, self._cy, self.n, sum(p.f32_rows for p in self.parts))
        for p in self.parts:  # the column ranges and dtype of all rows: the spread checks of the in-memory measures
            if p._ranges is not None:
                whole._track(p._ranges["x"], p._ranges["y"], p._dtype)
        return whole

    def replicates(self, names: Sequence[str], W: Any, *, memory_mb: int = 256,
                   options: dict | None = None) -> dict[str, torch.Tensor]:
        """Each measure on each replicate given by group counts ``W [R, G]``: ``{name: [R, La, Lb]}`` float64.

        Row ``r`` of ``W`` says how often each group is drawn in replicate ``r`` (``torch.ones(1, G)`` is
        the sample itself). A replicate whose measure is undefined (a constant layer, too few rows) is NaN,
        except under ``linear_cka`` / ``debiased_cka``, which follow the in-memory engine there too.
        Replicates' sums are formed ``memory_mb`` MiB at a time.

        Raises:
            ValueError: ``W`` not ``[R, G]`` integer counts, an empty accumulator, and what
                :meth:`CrossMoments.compute` raises on all rows (a name without a streaming form, bad
                options, ``debiased_cka`` without the debiased sums).
        """
        names = [names] if isinstance(names, str) else list(names)
        W = torch.as_tensor(W, dtype=F64)
        G = len(self.parts)
        if (W.ndim != 2 or W.shape[1] != G or not bool(torch.isfinite(W).all()) or bool((W < 0).any())
                or not torch.equal(W, W.round()) or bool((W > MAX_COUNT).any())):
            raise ValueError(f"W must hold integer counts in 0 .. {MAX_COUNT:,} of shape [R, {G}]; got shape "
                             f"{tuple(W.shape)}")
        whole = self.merged()  # raises as the measures do: unknown names, bad options, missing sums
        for name in names:
            whole.compute(name, **(options or {}).get(name, {}))
            if name in CKA_KINDS and not whole.debiased:
                raise ValueError(f"the bootstrap of {name} needs the sums of an accumulator built with debiased=True")
        dev = next(iter(self._stacked.values())).device
        W = W.to(dev)
        per = sum(t[0].numel() for t in self._stacked.values())
        batch = max(1, int(memory_mb) * 2**20 // (8 * per))
        ref = next(p for p in self.parts if p.n)
        counts = torch.tensor([float(p.n) for p in self.parts], dtype=F64, device=dev)
        f32 = torch.tensor([float(p.f32_rows) for p in self.parts], dtype=F64, device=dev)
        out = {m: torch.full((W.shape[0], ref._dims.La, ref._dims.Lb), float("nan"), dtype=F64) for m in names}
        cca = [m for m in names if m in ("cca_rho", "cca_r2", "pwcca")]
        basis = {s: whole._whitened(s) for s in "xy"} if cca and whole.f32_rows == 0 else None
        for start in range(0, W.shape[0], batch):
            Wb = W[start : start + batch]
            sums = {k: (Wb @ t.view(G, -1)).view((Wb.shape[0],) + t.shape[1:]) for k, t in self._stacked.items()}
            terms = self._cka_terms(Wb, sums) if any(m in CKA_KINDS for m in names) else None
            for m in names:
                if m in CKA_KINDS:
                    out[m][start : start + len(Wb)] = cka_from_terms(CKA_KINDS[m], terms).cpu()
            for r in range(Wb.shape[0]) if any(m not in CKA_KINDS for m in names) else ():
                acc = _from_sums(ref, {k: s[r] for k, s in sums.items()}, self._cx, self._cy,
                                 int(round(float(Wb[r] @ counts))), int(round(float(Wb[r] @ f32))))
                acc.replicate_of = basis if basis is not None else {}
                for m in names:
                    if m not in CKA_KINDS:
                        out[m][start + r] = _measure(acc, m, (options or {}).get(m, {}))
        return out


    def _cka_terms(self, Wb: torch.Tensor, S1: dict) -> BootTerms:
        """The CKA bootstrap terms (:class:`~homoscope.measures.controls.BootTerms`) of the replicates ``Wb [r, G]``
        from the groups' sums at the mean of all rows (``u = x - mean``, ``a = ||u||^2 = k``): ``S1`` sums
        weighted by the counts, ``S2``, ``S3`` by their squares and cubes (the diagonal terms of the copies)."""
        d, G = next(p for p in self.parts if p.n)._dims, len(self.parts)
        small = ("sa", "sb", "saa", "sbb", "sab", "sax", "sby", "say", "sbx")
        S2 = {k: ((Wb * Wb) @ self._stacked[k].view(G, -1)).view((len(Wb),) + self._stacked[k].shape[1:]) for k in small}
        S3 = {k: ((Wb ** 3) @ self._stacked[k].view(G, -1)).view((len(Wb),) + self._stacked[k].shape[1:])
              for k in ("saa", "sbb", "sab")}
        Sx, Sy = S1["sx"], S1["sy"]  # [r, La, da], [r, Lb, db]
        cxy = S1["cxy"].view(len(Wb), d.La, d.da, d.Lb, d.db)
        full = torch.stack([cxy[:, :, :, b].square().sum((-2, -1)) for b in range(d.Lb)], -1)  # [r, La, Lb]
        bil = torch.stack([torch.einsum("rad,radc,rc->ra", Sx, cxy[:, :, :, b], Sy[:, b]) for b in range(d.Lb)], -1)
        quad = lambda c, v: torch.einsum("rld,rlde,rle->rl", v, c, v)  # noqa: E731 - v' C v per layer
        dot = lambda a, v: (a * v).sum(-1)  # noqa: E731
        return BootTerms(
            m=Wb @ torch.tensor([float(p.n) for p in self.parts], dtype=F64, device=Wb.device),
            T0=full - S2["sab"],
            S0x=S1["cxx"].square().sum((-2, -1)) - S2["saa"], S0y=S1["cyy"].square().sum((-2, -1)) - S2["sbb"],
            qx=Sx.square().sum(-1) - S2["sa"], qy=Sy.square().sum(-1) - S2["sb"],
            exy=(bil - torch.einsum("rabd,rbd->rab", S2["say"], Sy) - torch.einsum("rbad,rad->rab", S2["sbx"], Sx)
                 + S3["sab"]),
            exx=quad(S1["cxx"], Sx) - 2 * dot(S2["sax"], Sx) + S3["saa"],
            eyy=quad(S1["cyy"], Sy) - 2 * dot(S2["sby"], Sy) + S3["sbb"],
            wk=S1["sa"], wl=S1["sb"], wkk=S1["saa"], wll=S1["sbb"], wkl=S1["sab"],
            lk=torch.einsum("rbad,rad->rab", S1["sbx"], Sx) - S2["sab"],
            kl=torch.einsum("rabd,rbd->rab", S1["say"], Sy) - S2["sab"],
            ekx=dot(S1["sax"], Sx) - S2["saa"], ely=dot(S1["sby"], Sy) - S2["sbb"])


def _group_ids(group: Any, m: int, G: int) -> torch.Tensor:
    """``group`` as int64 ids ``[m]`` in ``0 .. G-1`` (a tensor, array or list of integers)."""
    arr = as_numbers(group, "group", f"[m={m}] (integer ids)")
    if arr.ndim != 1 or arr.shape[0] != m or arr.dtype.kind not in "iu":
        raise ValueError(f"group must give one integer id per row (length {m}); got shape {arr.shape}, dtype {arr.dtype}")
    if m and (int(arr.min()) < 0 or int(arr.max()) >= G):
        raise ValueError(f"group ids must lie in 0 .. {G - 1}; got {int(arr.min())} .. {int(arr.max())}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))


def _from_sums(ref: CrossMoments, sums: dict, cx: torch.Tensor, cy: torch.Tensor, n: int, f32_rows: int) -> CrossMoments:
    """A :class:`CrossMoments` holding the given sums (at shifts ``cx``, ``cy``) of ``n`` rows."""
    acc = CrossMoments(debiased=ref.debiased, precision=ref.precision)
    acc._dims, acc._device, acc.units = ref._dims, ref._device, ref.units
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
