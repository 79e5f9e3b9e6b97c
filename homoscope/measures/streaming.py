"""Exact streaming accumulators: feed rows in chunks, merge shards in any order, compute at the end.

:class:`CrossMoments` keeps only sums over rows, for every layer of X ``[La, ., da]`` and Y
``[Lb, ., db]``:

- ``n``, column sums ``sum x``, ``sum y``, second moments ``X^T X``, ``Y^T Y`` and ``X^T Y``;
- for the unbiased HSIC (``debiased_cka``): with ``a_i = ||x_i||^2`` and ``b_i = ||y_i||^2``, the sums
  of ``a``, ``b``, ``a^2``, ``b^2``, ``a b``, ``a x``, ``b y``, ``a y`` and ``b x``.

Each of these fourteen sums is declared once (:data:`SUMS`: name, shape, how it is re-expressed when
the rows' shift moves); allocation, merging, device moves and the accessors come from that list.

Sums commute, so any chunking and any merge order give the same state up to rounding, and ``compute``
equals the one-shot measure. The measures available are those of :data:`STREAMING_MEASURES`:
``linear_cka``, ``debiased_cka`` (centering is applied analytically from the sums), the CCA family
(``cca_rho``, ``cca_r2``, ``svcca``, ``pwcca``: whitened through an eigendecomposition of the centered
covariance, directions with eigenvalue below ``max(n, d) * eps * largest`` dropped) and ``procrustes`` /
``procrustes_distance``.

Precision. The sums are float64, of rows shifted by a float64 shift near their column means, so a large
common offset never reaches a product. ``precision="float64"`` forms every product in float64: within
1e-10 of the in-memory float64 measures on well-conditioned data. ``precision="float32"`` (default) rounds
each block of :data:`~homoscope.measures._hsic.F32_PARTIAL` shifted rows to float32 once and forms all
layer pairs' cross products as one float32 GEMM of the concatenated layers (in column tiles), each
layer's own products as one GEMM, all added into the float64 sums: about 1.6x faster than float64 on
CPU, and ``linear_cka``, ``debiased_cka`` and ``procrustes`` stay within 1e-7 of the in-memory float64
values (measured 1e-9 .. 4e-8, as the in-memory float32 path; large offsets, drifting means and
massive-activation rows included, see the tests). Float32 mode runs float64 GEMMs where float32 would
lose that bound:

- rows whose norm in some layer exceeds :data:`MASSIVE_ROW_RATIO` times the block's median there
  (massive activations) are added in float64; a block with more than :data:`MASSIVE_ROW_SHARE` of them
  runs float64;
- a block whose mean is far from the shift (:data:`RESHIFT_RATIO`) first moves the shift to its own mean
  (exact algebra on the sums);
- the first rows, until the accumulator holds ``max(da, db)`` (before that the sums are rank-deficient,
  which magnifies rounding in the measures that add up singular values and in the unbiased estimator),
  blocks of fewer than 256 rows, layers with ``La da Lb db`` below :data:`FLOAT32_MIN_WORK` (float64 costs
  little there), values outside :data:`FLOAT32_RANGE`, and CUDA with TF32 matmuls allowed.

Extremes. Rows are multiplied by a power of two per layer before any product (:attr:`CrossMoments.units`,
fixed by the first chunk: 1 unless its values lie beyond ``2^64`` or below ``2^-64``, see :func:`_layer_units`),
so sums of fourth powers of rows like 1e200 or 1e-310 stay inside float64; every measure is invariant to it.
The accumulator keeps the column minima and maxima of the rows as given and the coarsest dtype among the
chunks; ``compute`` refuses, as the in-memory measures do (:func:`~homoscope.measures._validate.check_spread`),
a layer whose rows are identical or differ only by the rounding of that dtype (float32 rows near 1e8 are 8
apart), and names which; float64 rows at a large offset are measured.

The CCA family amplifies the rounding of the sums by the covariances' condition numbers: on a state with
float32 rows, ``compute`` raises a ValueError for a CCA measure whose estimated error
(:meth:`CrossMoments.float32_error`) exceeds 1e-7. Real hidden states are ill-conditioned (condition
numbers 1e4 .. 1e8): stream the CCA family with ``precision="float64"``.

Memory is dominated by ``X^T Y``: ``La * Lb * da * db`` float64 values (about 1.7 GB for 31 x 19 layers
of widths 576 x 640), plus a fixed workspace of about 64 MiB (float32 mode: a block of 1,024 rows in
float32 and a float32 tile of ``La da x 768``); it does not grow with the number of chunks. Stream fewer
layers at a time when that is too much.

:class:`MinibatchCKA` is the streaming form of :func:`~homoscope.measures.cka.minibatch_cka`
(Nguyen et al. 2021): each update is one minibatch whose HSIC terms are added to running sums.

Example::

    acc = StreamingMeasure("linear_cka")
    for x_chunk, y_chunk in chunks:        # [La, m, da], [Lb, m, db]
        acc.update(x_chunk, y_chunk)
    value = acc.compute()                  # [La, Lb] float64
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, NamedTuple

import torch

from . import cca as _cca
from ._hsic import F32_PARTIAL, FLOAT32_MIN_ROWS, check_precision, column_means, unbiased_hsic
from ._linalg import pow2_factor
from ._validate import check_min_n, check_spread, column_range, shape_pair
from .cka import _check_positive_self, minibatch_hsic_terms

F64 = torch.float64
EPS = torch.finfo(F64).eps
EPS32 = torch.finfo(torch.float32).eps

STREAMING_MEASURES = (
    "linear_cka",
    "debiased_cka",
    "cca_rho",
    "cca_r2",
    "svcca",
    "pwcca",
    "procrustes",
    "procrustes_distance",
)
_CCA_FAMILY = ("cca_rho", "cca_r2", "svcca", "pwcca")

# float32 mode (see the module doc). Products per row below this (La da x Lb db) run float64 GEMMs:
# float64 then costs under ~50 us per row, and narrow layers get little averaging of float32 rounding.
FLOAT32_MIN_WORK = 2**20
# A chunk runs float64 where a shifted entry reaches this, or a layer's spread is below its inverse
# (float32 products of such values would leave the normal float32 range).
FLOAT32_RANGE = 2.0**40
# A row whose norm in some layer exceeds this multiple of the block's median norm there (a massive
# activation) is added in float64; a block with more than MASSIVE_ROW_SHARE such rows runs float64.
MASSIVE_ROW_RATIO = 8.0
MASSIVE_ROW_SHARE = 1 / 16
# A float32 block whose mean is off the shift by more than this (squared offset over the per-row
# variance, in some layer) first moves the shift to its own mean: float32 error grows with the offset.
RESHIFT_RATIO = 1 / 16
# Columns of the float32 cross product formed per GEMM (a float32 tile of La da x TILE_COLS, then added
# into the float64 sums: keeps the temporary small and the addition in cache).
TILE_COLS = 768
# Bytes of the float64 block workspace.
WORKSPACE_BYTES = 1 << 26
# Rows whose largest magnitude in a layer lies beyond 2^UNIT_RANGE (or below its inverse) are summed in units
# of a power of two (see _layer_units): fourth powers of 2^64, times many rows, stay far inside float64.
UNIT_RANGE = 64
# The float32 error the CCA family may carry (see CrossMoments.float32_error).
CCA_FLOAT32_RTOL = 1e-7
# a bootstrap replicate re-whitens from the whole sample (see _rewhitening) unless a lower bound of the
# smallest eigenvalue of its covariance in the whole sample's whitened coordinates is at most this
REWHITEN_MIN = 1e-8


class Dims(NamedTuple):
    """Layer counts and widths of an accumulator: X ``[La, ., da]``, Y ``[Lb, ., db]``."""

    La: int
    da: int
    Lb: int
    db: int

    @property
    def Dx(self) -> int:
        return self.La * self.da

    @property
    def Dy(self) -> int:
        return self.Lb * self.db


@dataclass(frozen=True)
class Sum:
    """One running sum of :class:`CrossMoments`.

    Attributes:
        name: accessor name (``acc.<name>``).
        shape: storage shape for given :class:`Dims` (float64).
        reshift: ``reshift(t, acc, h)`` adds to the stored sum ``t``, in place, what moving the rows'
            shift by ``h`` (a :class:`_Shift`) changes; it may read only sums declared before it (they
            still hold their old values: :meth:`CrossMoments._move_shift` applies the rules last first).
        doc: the accessor's docstring.
        units: ``units(fx, fy, dims)``: the factor (broadcastable to the stored shape) that re-expresses the
            sum when the rows' units change by ``fx [La]`` (X layers) and ``fy [Lb]`` (Y layers).
        debiased: kept only by accumulators built with ``debiased=True``.
        view: how the accessor presents the stored tensor (default: as stored).
    """

    name: str
    shape: Callable[[Dims], tuple]
    reshift: Callable[[torch.Tensor, "CrossMoments", "_Shift"], Any]
    doc: str
    units: Callable[[torch.Tensor, torch.Tensor, Dims], torch.Tensor]
    debiased: bool = False
    view: Callable[[torch.Tensor, Dims], torch.Tensor] | None = None


class _Shift:
    """A move of the rows' shift: new rows ``u' = u + dx``, ``v' = v + dy`` (``dx`` = old - new shift).

    The derived sums are computed on first use from the accumulator's current (old) sums.
    """

    def __init__(self, acc: "CrossMoments", dx: torch.Tensor, dy: torch.Tensor):
        self.acc, self.dx, self.dy, self.n = acc, dx, dy, acc.n

    @cached_property
    def P(self):  # ||dx||^2 [La]
        return (self.dx * self.dx).sum(-1)

    @cached_property
    def Q(self):  # ||dy||^2 [Lb]
        return (self.dy * self.dy).sum(-1)

    @cached_property
    def sp(self):  # sum p with p = dx.u per row [La]
        return (self.dx * self.acc.sx).sum(-1)

    @cached_property
    def sq(self):  # sum q with q = dy.v [Lb]
        return (self.dy * self.acc.sy).sum(-1)

    @cached_property
    def cdx(self):  # sum p u [La, da]
        return _bmv(self.acc.cxx, self.dx)

    @cached_property
    def cdy(self):  # sum q v [Lb, db]
        return _bmv(self.acc.cyy, self.dy)

    @cached_property
    def py(self):  # sum p_a v_b [La, Lb, db]
        d = self.acc._dims
        return torch.bmm(self.dx[:, None, :], self.acc._sums["cxy"].view(d.La, d.da, d.Dy))[:, 0].view(d.La, d.Lb, d.db)

    @cached_property
    def xq(self):  # sum q_b u_a [Lb, La, da]
        d = self.acc._dims
        c = self.acc._sums["cxy"].view(d.Dx, d.Lb, d.db).permute(1, 0, 2)
        return torch.bmm(c, self.dy[:, :, None])[..., 0].view(d.Lb, d.La, d.da)

    @cached_property
    def sa_new(self):  # sum a' [La]
        return self.acc.sa + 2 * self.sp + self.n * self.P

    @cached_property
    def sb_new(self):  # sum b' [Lb]
        return self.acc.sb + 2 * self.sq + self.n * self.Q


def _outer_self(t: torch.Tensor, s: torch.Tensor, d: torch.Tensor, n: int) -> None:
    """``t += s d^T + d s^T + n d d^T`` per layer: ``sum u' u'^T`` from ``sum u u^T``."""
    o = s[:, :, None] * d[:, None, :]
    t.add_(o).add_(o.mT).add_(d[:, :, None] * d[:, None, :], alpha=n)


def _reshift_sab(t: torch.Tensor, s: "CrossMoments", h: _Shift) -> None:
    saq = torch.einsum("abd,bd->ab", s.say, h.dy)  # sum a_a q_b
    sbp = torch.einsum("bad,ad->ab", s.sbx, h.dx)  # sum b_b p_a
    spq = (h.py * h.dy[None]).sum(-1)  # sum p_a q_b
    P, Q, sp, sq = h.P[:, None], h.Q[None, :], h.sp[:, None], h.sq[None, :]
    t.add_(2 * saq + Q * s.sa[:, None] + 2 * sbp + 4 * spq + 2 * Q * sp + P * s.sb[None, :] + 2 * P * sq + h.n * P * Q)


# The sums, in dependency order (a rule reads only sums above it). u = x - shift, v = y - shift per row;
# a = ||u||^2, b = ||v||^2 per layer. Shapes use Dims (La, da, Lb, db); the units rules take the factors
# fx [La], fy [Lb] by which the rows' units change (a sum of u^p v^q scales by fx^p fy^q).
SUMS = (
    Sum("sx", lambda d: (d.La, d.da), lambda t, s, h: t.add_(h.dx, alpha=h.n), "``sum u`` ``[La, da]``.",
        lambda fx, fy, d: fx[:, None]),
    Sum("sy", lambda d: (d.Lb, d.db), lambda t, s, h: t.add_(h.dy, alpha=h.n), "``sum v`` ``[Lb, db]``.",
        lambda fx, fy, d: fy[:, None]),
    Sum("cxx", lambda d: (d.La, d.da, d.da), lambda t, s, h: _outer_self(t, s.sx, h.dx, h.n),
        "``sum u u^T`` per layer ``[La, da, da]``.", lambda fx, fy, d: (fx * fx)[:, None, None]),
    Sum("cyy", lambda d: (d.Lb, d.db, d.db), lambda t, s, h: _outer_self(t, s.sy, h.dy, h.n),
        "``sum v v^T`` per layer ``[Lb, db, db]``.", lambda fx, fy, d: (fy * fy)[:, None, None]),
    Sum("cxy", lambda d: (d.Dx, d.Dy),
        lambda t, s, h: t.addr_(s.sx.flatten(), h.dy.flatten()).addr_(h.dx.flatten(), (s.sy + h.n * h.dy).flatten()),
        "``sum u v^T`` for every layer pair ``[La, Lb, da, db]`` (a view of the ``[La da, Lb db]`` sums).",
        lambda fx, fy, d: fx.repeat_interleave(d.da)[:, None] * fy.repeat_interleave(d.db)[None, :],
        view=lambda t, d: t.view(d.La, d.da, d.Lb, d.db).permute(0, 2, 1, 3)),
    Sum("sa", lambda d: (d.La,), lambda t, s, h: t.add_(2 * h.sp + h.n * h.P), "``sum a`` ``[La]``.",
        lambda fx, fy, d: fx * fx, debiased=True),
    Sum("sb", lambda d: (d.Lb,), lambda t, s, h: t.add_(2 * h.sq + h.n * h.Q), "``sum b`` ``[Lb]``.",
        lambda fx, fy, d: fy * fy, debiased=True),
    Sum("sax", lambda d: (d.La, d.da),
        lambda t, s, h: t.add_(2 * h.cdx + h.P[:, None] * s.sx + h.dx * h.sa_new[:, None]),
        "``sum a u`` ``[La, da]`` (each layer with itself).", lambda fx, fy, d: (fx**3)[:, None], debiased=True),
    Sum("sby", lambda d: (d.Lb, d.db),
        lambda t, s, h: t.add_(2 * h.cdy + h.Q[:, None] * s.sy + h.dy * h.sb_new[:, None]),
        "``sum b v`` ``[Lb, db]`` (each layer with itself).", lambda fx, fy, d: (fy**3)[:, None], debiased=True),
    Sum("say", lambda d: (d.La, d.Lb, d.db),
        lambda t, s, h: t.add_(2 * h.py + h.P[:, None, None] * s.sy[None] + h.dy[None] * h.sa_new[:, None, None]),
        "``sum a v`` ``[La, Lb, db]``.", lambda fx, fy, d: (fx * fx)[:, None, None] * fy[None, :, None], debiased=True),
    Sum("sbx", lambda d: (d.Lb, d.La, d.da),
        lambda t, s, h: t.add_(2 * h.xq + h.Q[:, None, None] * s.sx[None] + h.dx[None] * h.sb_new[:, None, None]),
        "``sum b u`` ``[Lb, La, da]``.", lambda fx, fy, d: (fy * fy)[:, None, None] * fx[None, :, None], debiased=True),
    Sum("saa", lambda d: (d.La,),
        lambda t, s, h: t.add_(4 * (h.dx * h.cdx).sum(-1) + h.n * h.P * h.P + 4 * (h.dx * s.sax).sum(-1)
                               + 2 * h.P * s.sa + 4 * h.P * h.sp),
        "``sum a^2`` ``[La]``.", lambda fx, fy, d: fx**4, debiased=True),
    Sum("sbb", lambda d: (d.Lb,),
        lambda t, s, h: t.add_(4 * (h.dy * h.cdy).sum(-1) + h.n * h.Q * h.Q + 4 * (h.dy * s.sby).sum(-1)
                               + 2 * h.Q * s.sb + 4 * h.Q * h.sq),
        "``sum b^2`` ``[Lb]``.", lambda fx, fy, d: fy**4, debiased=True),
    Sum("sab", lambda d: (d.La, d.Lb), _reshift_sab, "``sum a b`` ``[La, Lb]``.",
        lambda fx, fy, d: (fx * fx)[:, None] * (fy * fy)[None, :], debiased=True),
)


class CrossMoments:
    """Running sums over rows of two representation stacks (all layers), mergeable in any order.

    The sums (:data:`SUMS`) are of shifted rows ``u = x - c``, ``v = y - e``, with ``c``, ``e`` float64
    shifts: the column means of the first chunk, moved (exact algebra on the sums) when a float32 block's
    mean is far from them or when :meth:`merge` adopts the other accumulator's shift. Every measure is
    invariant to the shift; it keeps the moment sums from cancelling when the columns have large means
    (the shifted-data algorithm of Chan, Golub & LeVeque 1983). The measures follow Kornblith et al. 2019
    (linear CKA), Song et al. 2012 (unbiased HSIC), Raghu et al. 2017 / Morcos et al. 2018 (SVCCA, PWCCA)
    and Ding et al. 2021 (Procrustes).

    :meth:`update` processes each chunk in blocks of rows through a fixed workspace (nothing grows with
    the number of chunks). Per block, the layers of each side are concatenated (``[b, La da]``,
    ``[b, Lb db]``) and ``X^T Y`` of all layer pairs is one GEMM; each layer's ``X_a^T X_a`` is one GEMM
    of its columns; the debiased sums are three small GEMMs. Cross-layer blocks ``X_a^T X_b`` are never
    formed. See the module doc for what ``precision`` changes and when float32 mode runs float64 anyway.

    Args:
        debiased: also keep the sums the unbiased HSIC needs (``debiased_cka``); costs
            ``O(La Lb (da + db))`` more memory.
        precision: ``"float32"`` (default: float32 GEMMs on float64-shifted rows, float64 sums) or
            ``"float64"``.
        block_rows: rows per block; default: 1,024 for float32 blocks, and for float64 blocks as many as
            fit in about 64 MiB (between 256 and 4096).

    Attributes:
        n: rows seen so far.
        f32_rows: rows whose products were formed in float32.

    Raises:
        ValueError: a bad ``precision`` or ``block_rows``.
    """

    def __init__(self, *, debiased: bool = True, precision: str = "float32", block_rows: int | None = None):
        check_precision(precision)
        if block_rows is not None and (type(block_rows) is not int or block_rows < 1):
            raise ValueError(f"block_rows must be a positive integer or None; got block_rows={block_rows!r}")
        self.debiased = bool(debiased)
        self.precision = precision
        self.block_rows = block_rows
        self.n = 0
        self.f32_rows = 0
        self._dims: Dims | None = None
        self._device: torch.device | None = None
        self._cx = self._cy = None  # shifts [La, da], [Lb, db], in the rows' units
        # powers of two per layer ([La], [Lb]) the rows are multiplied by before any product (see _layer_units);
        # set from the first chunk unless given first (GroupedMoments gives every group the same)
        self.units: tuple[torch.Tensor, torch.Tensor] | None = None
        # column minima and maxima of the rows as given ({"x": (lo, hi), "y": (lo, hi)}, float64 [L, d]) and
        # the coarsest dtype among the chunks: what check_spread reads (None on a bootstrap replicate)
        self._ranges: dict | None = None
        self._dtype = F64
        self._sums: dict[str, torch.Tensor] = {}
        self.fixed_shift = False  # True: float32 blocks never move the shift (see GroupedMoments)
        self._ws: dict[torch.dtype, dict[str, torch.Tensor]] = {}
        self._cache: dict = {}
        # set on a bootstrap replicate (see GroupedMoments.replicates): singular values from the smaller Gram
        # (_gram_svdvals) and, for the CCA family, the whole sample's whitening per side ({} where none)
        self.replicate_of: dict | None = None

    @property
    def _declared(self) -> tuple:
        return tuple(s for s in SUMS if self.debiased or not s.debiased)

    # ------------------------------------------------------------------ accumulation
    def update(self, x: Any, y: Any) -> "CrossMoments":
        """Add a chunk of rows: ``x [La, m, da]`` (or ``[m, da]``), ``y [Lb, m, db]``; any real dtype/device.

        The chunk is validated in its own dtype and shifted in float64 one block of rows at a time.

        Raises:
            ValueError: x or y not a tensor or array of numbers of shape ``[L, m, d]`` (None, a string, an
                object array, a ragged list: the message names the argument), non-finite values, row counts
                that differ, or layer counts / widths that differ from earlier chunks.
        """
        dt = _chunk_dtype(x, y)
        xs, ys = shape_pair(x, y, names=("x", "y"))
        xs, ys = xs.to(dtype=dt), ys.to(dtype=dt)
        rx, ry = column_range(xs, "x"), column_range(ys, "y")  # finiteness, without a mask of the chunk's size
        self._check_dims(Dims(xs.shape[0], xs.shape[2], ys.shape[0], ys.shape[2]))
        if self._device is not None and xs.device != self._device:
            xs, ys = xs.to(self._device), ys.to(self._device)
            rx, ry = tuple(t.to(self._device) for t in rx), tuple(t.to(self._device) for t in ry)
        if not self._sums:
            if self.units is None:
                self.units = (_layer_units(*rx), _layer_units(*ry))
            ux, uy = (u.to(xs.device)[:, None] for u in self.units)
            self._allocate(self._dims, xs.device, column_means(xs)[:, 0] * ux, column_means(ys)[:, 0] * uy)
        self._track(rx, ry, dt)
        ux, uy = (u[:, None] for u in self.units)
        f32 = self._float32_chunk((rx[0] * ux, rx[1] * ux), (ry[0] * uy, ry[1] * uy))
        step = self._rows(torch.float32 if f32 else F64)
        for r in range(0, xs.shape[1], step):
            self._add_block(xs[:, r : r + step], ys[:, r : r + step], f32)
        self._cache.clear()
        return self

    def _allocate(self, dims: Dims, device, cx: torch.Tensor, cy: torch.Tensor, storage: dict | None = None) -> None:
        """Zero sums (or the given zeroed ``storage`` tensors, by name) at shifts ``cx``, ``cy`` (in the rows'
        units: ``self.units`` is set)."""
        self._dims, self._device = dims, device
        self.units = tuple(u.to(device=device, dtype=F64) for u in self.units)
        self._unit_list = tuple(u.tolist() for u in self.units)  # python floats: no device sync per block
        self._cx, self._cy = cx.to(device=device, dtype=F64).clone(), cy.to(device=device, dtype=F64).clone()
        self._sums = dict(storage) if storage is not None else {
            s.name: torch.zeros(s.shape(dims), dtype=F64, device=device) for s in self._declared}

    def _rows(self, dtype: torch.dtype) -> int:
        if self.block_rows:
            return self.block_rows
        if dtype == torch.float32:
            return F32_PARTIAL
        return max(256, min(4096, WORKSPACE_BYTES // 8 // (self._dims.Dx + self._dims.Dy) // 256 * 256))

    def _workspace(self, dtype: torch.dtype) -> dict:
        """Block buffers of ``dtype`` (made once): ``zx [B, La da]``, ``zy [B, Lb db]``, a float32 ``tile``."""
        if dtype not in self._ws:
            d, B, dev = self._dims, self._rows(dtype), self._device
            ws = {k: torch.empty(B, D, dtype=dtype, device=dev) for k, D in (("zx", d.Dx), ("zy", d.Dy))}
            if dtype == torch.float32:
                size = max(d.Dx * min(TILE_COLS, d.Dy), d.da * d.da, d.db * d.db)
                ws["tile"] = torch.empty(size, dtype=dtype, device=dev)
            self._ws[dtype] = ws
        return self._ws[dtype]

    def _float32_chunk(self, rx, ry) -> bool:
        """Whether the chunk's blocks may run float32 GEMMs (precision, work per row, value range)."""
        d = self._dims
        if self.precision != "float32" or d.Dx * d.Dy < FLOAT32_MIN_WORK:
            return False
        if self._device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
            return False  # TF32 products would not keep the bound
        return _fits_float32(*rx, self._cx) and _fits_float32(*ry, self._cy)

    def _add_block(self, xb: torch.Tensor, yb: torch.Tensor, f32: bool) -> None:
        """Accumulate one block of rows ``xb [La, b, da]``, ``yb [Lb, b, db]`` (see the class doc)."""
        b, d = xb.shape[1], self._dims
        if f32 and b >= FLOAT32_MIN_ROWS and self.n >= max(d.da, d.db):
            zx, zy = self._shifted(xb, yb, torch.float32)
            big = _massive_rows(zx, zy, self._dims)
            if big.numel() <= MASSIVE_ROW_SHARE * b:
                self._add_float32_block(xb, yb, zx, zy, big)
                self.n += b
                return
        step = self._rows(F64)
        for r in range(0, b, step):
            self._accumulate(*self._shifted(xb[:, r : r + step], yb[:, r : r + step], F64))
        self.n += b

    def _add_float32_block(self, xb, yb, zx: torch.Tensor, zy: torch.Tensor, big: torch.Tensor) -> None:
        """A float32 block: massive rows ``big`` in float64, the shift moved first if the block is far from it."""
        m = xb.shape[1] - big.numel()
        sums = _drop_rows(zx, zy, big)
        if self.n:
            d = self._dims
            mx, my = self._cx + sums[0].view(d.La, d.da) / m, self._cy + sums[1].view(d.Lb, d.db) / m
            if not self.fixed_shift and self._offset(mx, my) > RESHIFT_RATIO:
                self._move_shift(mx, my)
                zx, zy = self._shifted(xb, yb, torch.float32)
                sums = _drop_rows(zx, zy, big)
        if big.numel():
            self._accumulate(*self._shifted(xb.index_select(1, big), yb.index_select(1, big), F64))
        self._accumulate(zx, zy, sums)
        self.f32_rows += m

    def _shifted(self, xb: torch.Tensor, yb: torch.Tensor, dtype: torch.dtype):
        """Shifted rows in the ``dtype`` workspace: ``zx [b, La da]``, ``zy [b, Lb db]`` (shift in float64)."""
        ws, d, b = self._workspace(dtype), self._dims, xb.shape[1]
        zx, zy = ws["zx"][:b], ws["zy"][:b]
        (ux, uy), sides = self._unit_list, ((zx, xb, self._cx), (zy, yb, self._cy))
        for (z, src, c), units, w in zip(sides, (ux, uy), (d.da, d.db)):
            for a in range(src.shape[0]):  # computed in float64 (the common dtype), rounded once into z
                rows = src[a] if units[a] == 1.0 else src[a].to(F64) * units[a]  # exact: a power of two
                torch.sub(rows, c[a], out=z[:, a * w : (a + 1) * w])
        return zx, zy

    def _track(self, rx: tuple, ry: tuple, dtype: torch.dtype) -> None:
        """Fold a chunk's column minima and maxima (as given) and its dtype into what :meth:`_check` reads."""
        self._ranges, self._dtype = _fold_ranges(self._ranges, rx, ry), _coarser(self._dtype, dtype)

    def _offset(self, mx: torch.Tensor, my: torch.Tensor) -> float:
        """Largest squared distance of block means ``mx``, ``my`` from the shift over the per-row variance."""
        out = 0.0
        for mean, c, g, s in ((mx, self._cx, "cxx", "sx"), (my, self._cy, "cyy", "sy")):
            tr = self._sums[g].diagonal(dim1=-2, dim2=-1).sum(-1)
            var = tr / self.n - (self._sums[s] / self.n).square().sum(-1)
            ratio = (mean - c).square().sum(-1) / var.clamp(min=0.0)
            out = max(out, float(torch.nan_to_num(ratio, nan=0.0).max()))
        return out

    def _accumulate(self, zx: torch.Tensor, zy: torch.Tensor, sums=None) -> None:
        """Add the sums of shifted rows ``zx [b, La da]``, ``zy [b, Lb db]`` (float32 or float64; ``sums``:
        their column sums, if known)."""
        s, d = self._sums, self._dims
        sx, sy = sums if sums is not None else (_column_sum(zx), _column_sum(zy))
        s["sx"].view(-1).add_(sx)
        s["sy"].view(-1).add_(sy)
        tile = self._ws[torch.float32]["tile"] if zx.dtype == torch.float32 else None
        _add_self(s["cxx"], zx, d.da, tile)
        _add_self(s["cyy"], zy, d.db, tile)
        _add_cross(s["cxy"], zx, zy, tile)
        if self.debiased:
            self._accumulate_debiased(zx, zy)

    def _accumulate_debiased(self, zx: torch.Tensor, zy: torch.Tensor) -> None:
        s, d, b = self._sums, self._dims, zx.shape[0]
        # a, b per row and layer: float32 norms of float32 rows (relative error ~1e-7, averaged over rows)
        wa = torch.linalg.vector_norm(zx.view(b, d.La, d.da), dim=-1).to(F64).square_().T  # [La, b]
        wb = torch.linalg.vector_norm(zy.view(b, d.Lb, d.db), dim=-1).to(F64).square_().T  # [Lb, b]
        s["sa"].add_(wa.sum(1))
        s["sb"].add_(wb.sum(1))
        s["saa"].add_((wa * wa).sum(1))
        s["sbb"].add_((wb * wb).sum(1))
        s["sab"].addmm_(wa, wb.T)
        ga, gb = wa.to(zx.dtype), wb.to(zx.dtype)
        _add_product(s["say"].view(d.La, d.Dy), ga, zy)
        _add_product(s["sbx"].view(d.Lb, d.Dx), gb, zx)
        s["sax"].add_(torch.bmm(zx.view(b, d.La, d.da).permute(1, 2, 0), ga[:, :, None])[..., 0])
        s["sby"].add_(torch.bmm(zy.view(b, d.Lb, d.db).permute(1, 2, 0), gb[:, :, None])[..., 0])

    def _move_shift(self, cx: torch.Tensor, cy: torch.Tensor) -> None:
        """Re-express every sum for rows shifted by ``cx``, ``cy`` (in place; exact float64 algebra)."""
        dx, dy = self._cx - cx, self._cy - cy
        if bool(dx.any()) or bool(dy.any()):
            h = _Shift(self, dx, dy)
            for spec in reversed(self._declared):  # a rule reads only sums above it: still the old values
                spec.reshift(self._sums[spec.name], self, h)
        self._cx, self._cy = cx.clone(), cy.clone()
        self._cache.clear()

    def merge(self, other: "CrossMoments") -> "CrossMoments":
        """Add another accumulator's sums into this one (in place) and return self.

        This accumulator's sums are first re-expressed at the other's shift (exact algebra on the sums); the
        other's sums are re-expressed in this one's units where those differ (rows beyond ``2^64`` or below
        ``2^-64`` in magnitude, see :func:`_layer_units`; a temporary copy of each sum).

        Raises:
            TypeError: ``other`` is not a CrossMoments.
            ValueError: ``other`` is this accumulator, a different ``precision``, different layer counts /
                widths, ``other`` lacks the debiased sums, or units so far apart that the sums would leave the float64 range.
        """
        if not isinstance(other, CrossMoments):
            raise TypeError(f"can only merge a CrossMoments; got {type(other).__name__}")
        if other is self:
            raise ValueError("cannot merge an accumulator into itself: its rows would count twice")
        if other.precision != self.precision:
            raise ValueError(
                f"cannot merge accumulators of different precision: other has precision={other.precision!r}, "
                f"this one precision={self.precision!r}"
            )
        if other.n == 0:
            return self
        if self.debiased and not other.debiased:
            raise ValueError("cannot merge: other was built with debiased=False, so it lacks the debiased sums")
        self._check_dims(other._dims)
        if not self._sums:
            self.units = other.units
            self._allocate(other._dims, self._device or other._device, other._cx, other._cy)
        fx, fy = (mine / theirs.to(mine) for mine, theirs in zip(self.units, other.units))
        rescale = not (bool((fx == 1).all()) and bool((fy == 1).all()))
        if rescale and not all(bool((f**4 > 0).all() and torch.isfinite(f**4).all()) for f in (fx, fy)):
            raise ValueError("cannot merge: the two accumulators' rows differ in magnitude by more than 2^250 (their "
                             "sums would leave the float64 range); divide the larger representations by a constant")
        self._move_shift(other._cx.to(self._device) * fx[:, None], other._cy.to(self._device) * fy[:, None])
        for spec in self._declared:
            t = other._sums[spec.name].to(self._device)
            self._sums[spec.name].add_(t * spec.units(fx, fy, self._dims) if rescale else t)
        if other._ranges is not None:
            self._track(other._ranges["x"], other._ranges["y"], other._dtype)
        self.n += other.n
        self.f32_rows += other.f32_rows
        self._cache.clear()
        return self

    def to(self, device: torch.device | str) -> "CrossMoments":
        """Move the sums and shifts to ``device`` (in place) and return self; later chunks go there too."""
        self._device = torch.empty(0, device=device).device  # the canonical device (cuda -> cuda:0)
        if self._sums:
            self._cx, self._cy = self._cx.to(self._device), self._cy.to(self._device)
            self.units = tuple(u.to(self._device) for u in self.units)
            self._sums = {k: t.to(self._device) for k, t in self._sums.items()}
        if self._ranges is not None:
            self._ranges = {k: tuple(t.to(self._device) for t in v) for k, v in self._ranges.items()}
        self._ws, self._cache = {}, {}
        return self

    def _check_dims(self, dims: Dims) -> None:
        if self._dims is None:
            self._dims = dims
        elif tuple(dims) != tuple(self._dims):
            raise ValueError(
                f"chunk shape disagrees with earlier chunks: (La, da, Lb, db)={tuple(dims)}, "
                f"expected {tuple(self._dims)}"
            )

    def _raw_diag(self, side: str) -> torch.Tensor:
        """``sum x_j^2`` of the unshifted rows per column, ``[L, d]`` (scale for the constant-column rules)."""
        c, s, m = (self._cx, self.sx, self.cxx) if side == "x" else (self._cy, self.sy, self.cyy)
        return (m.diagonal(dim1=-2, dim2=-1) + 2 * c * s + self.n * c * c).clamp_(min=0.0)

    def _floor(self, side: str) -> torch.Tensor:
        """``[L, d]``: a column's centered sum of squares at or below this is rounding, not variance.

        The rounding of the centered sums (``64 eps`` of the shifted ones, float32's eps once float32 products
        were added), or a spread within ``64 eps`` of float64 at the column's magnitude (as the in-memory CCA).
        """
        eps = EPS32 if self.f32_rows else EPS
        shifted = (self.cxx if side == "x" else self.cyy).diagonal(dim1=-2, dim2=-1)
        return 64 * eps * shifted + (64 * EPS) ** 2 * self._raw_diag(side)

    # ------------------------------------------------------------------ derived quantities
    def _cached(self, key, make: Callable):
        """A quantity derived from the sums, kept until the next update, merge or device move."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _means(self):
        """Column means of the shifted rows ``(sum u / n [La, da], sum v / n [Lb, db])``."""
        return self._cached("means", lambda: (self.sx / self.n, self.sy / self.n))

    def _gram(self, side: str) -> torch.Tensor:
        """Centered second moments of one side: ``Gxx [La, da, da]`` or ``Gyy [Lb, db, db]`` (sums, not /n)."""

        def make():
            m = self._means()[0 if side == "x" else 1]
            g = self.cxx if side == "x" else self.cyy
            return g - self.n * m[:, :, None] * m[:, None, :]

        return self._cached(("gram", side), make)

    def _cross_block(self, c: int) -> torch.Tensor:
        """Centered cross moments of every X layer with Y layer ``c``: ``[La, da, db]`` (a new tensor)."""
        d = self._dims
        mx, my = self._means()
        block = self._sums["cxy"][:, c * d.db : (c + 1) * d.db].view(d.La, d.da, d.db)
        return block - self.n * mx[:, :, None] * my[c][None, None, :]

    def _cross_sq(self) -> torch.Tensor:
        """``||Gxy||_F^2`` of every layer pair ``[La, Lb]``, one Y layer at a time (no full copy of the sums)."""

        def make():
            cols = [self._cross_block(c).square().sum(dim=(-2, -1)) for c in range(self._dims.Lb)]
            return torch.stack(cols, 1)

        return self._cached("cross_sq", make)

    def centered(self):
        """Centered second moments ``(Gxx [La,da,da], Gyy [Lb,db,db], Gxy [La,Lb,da,db])`` (sums, not /n)."""
        gxy = torch.stack([self._cross_block(c) for c in range(self._dims.Lb)], 1)
        return self._gram("x").clone(), self._gram("y").clone(), gxy

    def _check(self, measure: str, min_n: int, why: str) -> None:
        if self.n == 0:
            raise ValueError(f"{measure}: the accumulator is empty (n=0); call update() first")
        check_min_n(self.n, min_n, measure, why)
        if not self._cached("finite", lambda: all(bool(torch.isfinite(t).all()) for t in self._sums.values())):
            raise ValueError(f"{measure}: the streamed sums overflow float64 (chunks whose values differ in magnitude "
                             "by more than 2^200 from the first chunk's); divide those representations by a constant")
        for name, side in (("X", "x"), ("Y", "y")):
            if self._ranges is not None:  # the rule of the in-memory measures, on the rows as given
                check_spread(*self._ranges[side], self._dtype, name, measure, self.n)
            tr = self._gram(side).diagonal(dim1=-2, dim2=-1).sum(-1)
            bad = (tr <= self._floor(side).sum(-1)).nonzero().flatten().tolist()
            if bad and self._ranges is None:  # a bootstrap replicate: its drawn rows are all alike
                raise ValueError(
                    f"{name} layer {bad[0]} has zero variance after centering (all {self.n} rows are identical); "
                    f"{measure} is undefined for a constant layer"
                )
            if bad:
                raise ValueError(
                    f"{name} layer {bad[0]}: its variance is lost to rounding in the streamed sums (the rows lie far "
                    f"from the shift the sums are kept at); {measure} cannot be computed from them: stream the rows "
                    "with their column means removed"
                )

    def _unbiased_terms(self):
        n, d = self.n, self._dims
        mx, my = self._means()
        px, py = (mx * mx).sum(-1), (my * my).sum(-1)  # ||mu||^2 [La], ||nu||^2 [Lb]
        mcx = torch.bmm(mx[:, None, :], self._sums["cxy"].view(d.La, d.da, d.Dy))[:, 0].view(d.La, d.Lb, d.db)
        # sum_i k_i l_i with k_i = ||x_i - mu||^2, l_i = ||y_i - nu||^2, expanded into the stored sums
        kl = (
            self.sab
            - 2 * torch.einsum("abd,bd->ab", self.say, my)
            - 2 * torch.einsum("bad,ad->ab", self.sbx, mx)
            + 4 * (mcx * my[None]).sum(-1)
            + py[None, :] * self.sa[:, None]
            + px[:, None] * self.sb[None, :]
            - 3 * n * px[:, None] * py[None, :]
        )
        kk = self.saa - 4 * (self.sax * mx).sum(-1) + 4 * (mx * _bmv(self.cxx, mx)).sum(-1) + 2 * px * self.sa
        kk = kk - 3 * n * px * px
        ll = self.sbb - 4 * (self.sby * my).sum(-1) + 4 * (my * _bmv(self.cyy, my)).sum(-1) + 2 * py * self.sb
        ll = ll - 3 * n * py * py
        sk, sl = self.sa - n * px, self.sb - n * py
        gxx, gyy = self._gram("x"), self._gram("y")
        sx, sy = gxx.square().sum(dim=(-2, -1)), gyy.square().sum(dim=(-2, -1))
        return unbiased_hsic(self._cross_sq(), sx, sy, kl, kk, ll, sk, sl, n)

    # ------------------------------------------------------------------ measures
    def compute(self, name: str, **options: Any) -> torch.Tensor:
        """The measure ``name`` from the sums: ``[La, Lb]`` float64.

        Args:
            name: one of :data:`STREAMING_MEASURES`.
            options: the measure's options (``variance_kept`` for svcca, ``weights_from`` for pwcca).

        Raises:
            ValueError: unknown/unsupported name, an option the measure's streaming form does not take
                (:data:`STREAMING_OPTIONS`), an empty or too small accumulator, a constant layer,
                the CCA rule n > d, a debiased measure on an accumulator built with debiased=False, or a
                CCA measure whose float32 error estimate exceeds 1e-7 (see :meth:`float32_error`).
        """
        if name not in STREAMING_MEASURES:
            raise ValueError(
                f"no streaming form for measure {name!r}; streaming measures: {', '.join(STREAMING_MEASURES)}"
            )
        _check_options(name, options)
        if name in _CCA_FAMILY:
            return self._cca(name, **options)
        if name == "debiased_cka":
            if not self.debiased:
                raise ValueError("debiased_cka needs an accumulator built with debiased=True")
            self._check(name, 4, "the unbiased HSIC estimator divides by n-3")
            cross_u, hx, hy = self._unbiased_terms()
            _check_positive_self(hx, "X", name)
            _check_positive_self(hy, "Y", name)
            return (cross_u / torch.sqrt(hx[:, None] * hy[None, :])).clamp_(-1.0, 1.0)
        self._check(name, 2, "centering needs two rows")
        if name == "linear_cka":
            sx, sy = (self._gram(s).square().sum(dim=(-2, -1)) for s in ("x", "y"))
            return (self._cross_sq() / torch.sqrt(sx[:, None] * sy[None, :])).clamp_(0.0, 1.0)
        tx, ty = (self._gram(s).diagonal(dim1=-2, dim2=-1).sum(-1) for s in ("x", "y"))
        nuc = torch.stack([self._svdvals(self._cross_block(c)).sum(-1) for c in range(self._dims.Lb)], 1)
        sim = (nuc / torch.sqrt(tx[:, None] * ty[None, :])).clamp_(0.0, 1.0)
        return sim if name == "procrustes" else (2.0 - 2.0 * sim).clamp_(0.0, 2.0)

    def _svdvals(self, M: torch.Tensor) -> torch.Tensor:
        """Singular values of ``M [..., p, q]``: an SVD, or in a bootstrap replicate :func:`_gram_svdvals`."""
        return _gram_svdvals(M) if self.replicate_of is not None else torch.linalg.svdvals(M)

    def _whitened(self, side: str, any_basis: bool = False):
        """``(W [L, d, d], rank [L], d_eff [L], eigenvalues [L, d])`` of one side (see :func:`_whitening`).

        ``any_basis``: the caller needs only ``W^T G W = I`` on the kept directions, not the eigenbasis; in a
        bootstrap replicate (``replicate_of`` set) W is then re-whitened from the whole sample's (see
        :func:`_rewhitening`), eigenvalues and ranks being the whole sample's.
        """
        if any_basis and self.replicate_of and self.f32_rows == 0:
            return self._cached(("rewhite", side), lambda: _rewhitening(
                self._gram(side), self.replicate_of[side], lambda: self._whitened(side)))
        return self._cached(("white", side), lambda: _whitening(self._gram(side), self._floor(side), self.n))

    def float32_error(self, name: str, **options: Any) -> float:
        """Estimated largest error of the CCA measure ``name`` due to the float32 products (0 without them).

        The whitening amplifies the float32 rounding of the sums (relative ``EPS32 sqrt(B / n32)`` for
        partial sums of ``B`` rows over ``n32`` float32 rows) by the condition numbers ``kx``, ``ky`` of the
        covariances over the directions kept: the estimate is ``EPS32 sqrt(B / n32) (1 + sqrt(kx ky) / 100)``
        for the worst layer pair. Against measured errors (power-law spectra ``k^-p``, p = 0 .. 1.5,
        n = 2,048 .. 32,768, d = 64 .. 768) it was 7x to 1,000x above the error in every case; real hidden states
        (kx ~ 1e4 .. 1e8) mostly exceed 1e-7, so stream the CCA family with ``precision="float64"``.

        Raises:
            ValueError: ``name`` not a CCA measure, or the errors of :meth:`compute`.
        """
        if name not in _CCA_FAMILY:
            raise ValueError(f"float32_error is for the CCA family {_CCA_FAMILY}; got name={name!r}")
        if self.f32_rows == 0:
            return 0.0
        self._check(name, 2, "centering needs two rows")
        kappa = []
        for side in ("x", "y"):
            w, rank, _, lam = self._whitened(side)
            if name == "svcca":
                _, rank = _svcca_keep(w, self._gram(side), rank, float(options.get("variance_kept", 0.99)))
            low = lam.gather(-1, (rank.clamp(min=1) - 1)[:, None])[:, 0]
            kappa.append(float((lam[:, 0] / low).max()))
        rel = EPS32 * math.sqrt(self._rows(torch.float32) / self.f32_rows)
        return rel * (1.0 + math.sqrt(kappa[0] * kappa[1]) / 100)

    def _cca(self, name: str, *, variance_kept: float = 0.99, weights_from: str = "x") -> torch.Tensor:
        self._check(name, 2, "centering needs two rows")
        if name == "svcca" and (not isinstance(variance_kept, (int, float)) or not 0.0 < float(variance_kept) <= 1.0):
            raise ValueError(f"svcca: variance_kept must be in (0, 1]; got variance_kept={variance_kept!r}")
        if name == "pwcca" and weights_from not in ("x", "y"):
            raise ValueError(f"pwcca: weights_from must be 'x' or 'y'; got weights_from={weights_from!r}")
        n = self.n
        basis = name != "svcca"  # svcca keeps leading eigen-directions; the rest need any whitening
        (wx, rx, dx, _), (wy, ry, dy, _) = self._whitened("x", basis), self._whitened("y", basis)
        if name == "svcca":
            wx, rx = _svcca_keep(wx, self._gram("x"), rx, float(variance_kept))
            wy, ry = _svcca_keep(wy, self._gram("y"), ry, float(variance_kept))
        else:
            for side, d in (("x", dx), ("y", dy)):
                if n <= int(d.max()):
                    raise ValueError(
                        f"{name} needs more rows than non-constant columns (n > max(d_x, d_y)): n={n} <= "
                        f"d_{side}={int(d.max())}; canonical correlations would be forced to 1. Use more rows, "
                        "or svcca to reduce dimensions first"
                    )
        self._check_float32_error(name, variance_kept)
        _cca._warn_forced(n, rx, ry, name)
        count = torch.minimum(rx[:, None], ry[None, :]).to(F64)
        cols = [self._cca_column(name, c, wx, wy[c], count[:, c], weights_from) for c in range(self._dims.Lb)]
        return torch.stack(cols, 1).clamp_(0.0, 1.0)

    def _check_float32_error(self, name: str, variance_kept: float) -> None:
        err = self.float32_error(name, variance_kept=variance_kept)
        if err > CCA_FLOAT32_RTOL:
            raise ValueError(
                f"{name}: {self.f32_rows} of n={self.n} rows were accumulated with precision='float32', and the "
                f"covariances' condition numbers make the estimated float32 error {err:.1e} > {CCA_FLOAT32_RTOL:g}; "
                "accumulate with precision='float64' for the CCA family"
            )

    def _cca_column(self, name, c, wx, wyc, count, weights_from) -> torch.Tensor:
        """One CCA measure between every X layer and Y layer ``c``: ``[La]``."""
        M = wx.mT @ self._cross_block(c) @ wyc  # whitened cross-covariance [La, da, db]
        if name == "cca_r2":
            return (M * M).sum(dim=(-2, -1)) / count
        if name in ("cca_rho", "svcca"):
            return self._svdvals(M).clamp_(0.0, 1.0).sum(-1) / count
        # pwcca: weights from the side's canonical variates h_i = Zc W p_i: <h_i, z_j> = (G W p_i)_j
        if weights_from == "x":
            gw = self._cached("gw_x", lambda: self._gram("x") @ wx)
        else:
            M, gw = M.mT, self._gram("y")[c] @ wyc
        if self.replicate_of is not None:  # left singular vectors from the Gram (see _gram_svdvals)
            rho2, P = torch.linalg.eigh(M @ M.mT)
            P, rho = P.flip(-1)[..., : min(M.shape[-2:])], rho2.flip(-1)[..., : min(M.shape[-2:])].clamp(min=0.0).sqrt()
        else:
            P, rho, _ = torch.linalg.svd(M, full_matrices=False)
        proj = (gw @ P).abs().sum(dim=-2)  # [La, m]
        valid = torch.arange(rho.shape[-1], device=M.device)[None, :] < count[:, None]
        w = proj * valid
        return (w / w.sum(dim=-1, keepdim=True) * rho.clamp(0.0, 1.0)).sum(-1)


def _sum_accessor(spec: Sum) -> property:
    def get(self: CrossMoments) -> torch.Tensor:
        t = self._sums[spec.name]
        return t if spec.view is None else spec.view(t, self._dims)

    return property(get, doc=spec.doc)


for _spec in SUMS:  # the accessors come from the declaration
    setattr(CrossMoments, _spec.name, _sum_accessor(_spec))
del _spec


def _layer_units(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Per-layer powers of two ``[L]`` (float64) rows are multiplied by before any product: 1 where a layer's
    largest magnitude (from column minima and maxima ``[L, d]``) lies within ``2^-UNIT_RANGE .. 2^UNIT_RANGE``
    (float32 hidden states), else the one that brings it into [0.5, 1) (at most ``2^1000``: subnormal rows
    land near ``2^-74`` or above). Exact, and every measure is invariant to it; it keeps sums of fourth powers
    of rows like 1e200 or 1e-310 inside the float64 range."""
    big = torch.maximum(lo.abs(), hi.abs()).amax(-1)
    _, e = torch.frexp(big)
    e = torch.where((e.abs() <= UNIT_RANGE) | (big == 0), torch.zeros_like(e), e).clamp_(min=-1000)
    f1, f2 = pow2_factor(-e)
    return f1 * f2


def _fold_ranges(ranges: dict | None, rx: tuple, ry: tuple) -> dict:
    """Column minima and maxima ``{"x": (lo, hi), "y": (lo, hi)}`` so far, with a chunk's ``rx``, ``ry`` folded in."""
    if ranges is None:
        return {"x": rx, "y": ry}
    return {side: (torch.minimum(lo, r[0].to(lo)), torch.maximum(hi, r[1].to(hi)))
            for (side, (lo, hi)), r in zip(ranges.items(), (rx, ry))}


def _coarser(*dtypes: torch.dtype) -> torch.dtype:
    """The least precise of floating dtypes (what rows of all were rounded to, at worst)."""
    return max(dtypes, key=lambda t: torch.finfo(t).eps)


def _fits_float32(lo: torch.Tensor, hi: torch.Tensor, c: torch.Tensor) -> bool:
    """Whether shifted values ``[lo, hi] - c`` (``[L, d]``) stay in float32's comfortable range (see FLOAT32_RANGE)."""
    reach = torch.maximum((hi - c).abs(), (lo - c).abs()).amax(-1)
    spread = (hi - lo).amax(-1)
    ok = (reach <= FLOAT32_RANGE) & ((spread == 0) | (spread * FLOAT32_RANGE >= 1))
    return bool(ok.all())


def _massive_rows(zx: torch.Tensor, zy: torch.Tensor, d: Dims) -> torch.Tensor:
    """Rows of a block whose norm in some layer exceeds MASSIVE_ROW_RATIO times the block's median there."""
    b = zx.shape[0]
    nx = torch.linalg.vector_norm(zx.view(b, d.La, d.da), dim=-1)
    norms = torch.cat([nx, torch.linalg.vector_norm(zy.view(b, d.Lb, d.db), dim=-1)], 1)
    med = norms.median(dim=0).values
    return (norms > MASSIVE_ROW_RATIO * med).any(1).nonzero().flatten()


def _bmv(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product ``m [L, d, d] @ v [L, d]`` -> ``[L, d]``."""
    return torch.bmm(m, v[:, :, None])[..., 0]


def _column_sum(z: torch.Tensor, part: int = 64) -> torch.Tensor:
    """Column sums of ``z [b, D]`` in float64: float32 rows summed in runs of ``part``, the runs in float64
    (an upcast reduction over rows is ~15x slower on CPU)."""
    if z.dtype == F64:
        return z.sum(0)
    q = z.shape[0] // part * part
    out = z[:q].view(-1, part, z.shape[1]).sum(1).sum(0, dtype=F64)
    return out.add_(z[q:].sum(0, dtype=F64)) if q < z.shape[0] else out


def _drop_rows(zx: torch.Tensor, zy: torch.Tensor, rows: torch.Tensor):
    """Zero ``rows`` of both blocks (in place); return their column sums ``([Dx], [Dy])`` float64."""
    if rows.numel():
        zx.index_fill_(0, rows, 0.0)
        zy.index_fill_(0, rows, 0.0)
    return _column_sum(zx), _column_sum(zy)


def _add_self(acc: torch.Tensor, z: torch.Tensor, d: int, tile: torch.Tensor | None) -> None:
    """``acc[a] += z_a^T z_a`` for the layer blocks ``z_a = z[:, a d : (a+1) d]`` (strided views, no copies)."""
    for a in range(acc.shape[0]):
        za = z[:, a * d : (a + 1) * d]
        if tile is None:
            acc[a].addmm_(za.T, za)
        else:
            t = tile[: d * d].view(d, d)
            torch.mm(za.T, za, out=t)
            acc[a].add_(t)


def _add_cross(acc: torch.Tensor, zx: torch.Tensor, zy: torch.Tensor, tile: torch.Tensor | None) -> None:
    """``acc [Dx, Dy] += zx^T zy``: one float64 GEMM, or float32 GEMMs of TILE_COLS columns added into acc."""
    if tile is None:
        acc.addmm_(zx.T, zy)
        return
    Dx, Dy = acc.shape
    for c in range(0, Dy, TILE_COLS):
        w = min(TILE_COLS, Dy - c)
        t = tile[: Dx * w].view(Dx, w)
        torch.mm(zx.T, zy[:, c : c + w], out=t)
        acc[:, c : c + w].add_(t)


def _add_product(acc: torch.Tensor, a: torch.Tensor, z: torch.Tensor) -> None:
    """``acc += a @ z`` into float64 ``acc`` (the product in ``z``'s dtype)."""
    if z.dtype == F64:
        acc.addmm_(a, z)
    else:
        acc.add_(a @ z)


#: The options each streaming measure takes (the others take none).
STREAMING_OPTIONS = {"svcca": ("variance_kept",), "pwcca": ("weights_from",)}


def _check_options(name: str, options: dict) -> None:
    """Raise a ValueError for an option the streaming form of ``name`` does not take (listing those it takes)."""
    takes = STREAMING_OPTIONS.get(name, ())
    unknown = [k for k in options if k not in takes]
    if unknown:
        raise ValueError(f"{name} in streaming form takes no option {unknown[0]!r}; its options: "
                         f"{', '.join(takes) or 'none'}")


def _chunk_dtype(*arrays: Any) -> torch.dtype:
    """The dtype a chunk is validated in: its own floating dtype (promoted across x and y), else float64."""
    dt = None
    for a in arrays:
        d = a.dtype if isinstance(a, torch.Tensor) else None
        if d is None or not d.is_floating_point:
            return torch.float64
        dt = d if dt is None else torch.promote_types(dt, d)
    return dt


def _whitening(g: torch.Tensor, floor: torch.Tensor, n: int):
    """Whitening maps ``W [L, d, d]`` with ``W^T G W = I`` on the kept directions (others zero columns).

    Constant columns (centered variance at or below ``floor [L, d]``, see :meth:`CrossMoments._floor`) are
    dropped first. Returns ``(W, rank [L], d_eff [L], eigenvalues [L, d] descending)``.
    """
    d = g.shape[-1]
    diag = g.diagonal(dim1=-2, dim2=-1)
    const = diag <= floor
    mask = (~const).to(g.dtype)
    g = g * mask[:, :, None] * mask[:, None, :]
    lam, V = torch.linalg.eigh(g)  # ascending
    lam, V = lam.flip(-1), V.flip(-1)
    keep = lam > max(n, d) * EPS * lam[:, :1]
    inv = torch.where(keep, lam.clamp(min=torch.finfo(torch.float64).tiny).rsqrt(), torch.zeros_like(lam))
    return V * inv[:, None, :], keep.sum(-1), (~const).sum(-1), lam


def _rewhitening(g: torch.Tensor, whole: tuple, own: Callable):
    """A bootstrap replicate's whitening from the whole sample's ``whole = (W0, rank, d_eff, eigenvalues)``.

    A replicate reweights the same groups, so ``A = W0^T G W0`` is near the identity on the directions kept
    on all rows; its Cholesky factor ``L`` gives ``W = W0 L^-T`` with ``W^T G W = I`` there. The canonical
    correlations do not depend on the whitening basis, so they are the replicate's own, at a tenth of an
    eigendecomposition's cost; the replicate keeps the whole sample's directions (its rank and d_eff).
    Layers where a kept direction has lost its variance (``1 / ||L^-1||_F^2``, a lower bound of ``A``'s
    smallest eigenvalue, at most :data:`REWHITEN_MIN`) take the replicate's own eigendecomposition ``own()``.
    """
    W0, rank, d_eff, lam = whole
    kept = (W0.square().sum(-2) > 0).to(g.dtype)  # [L, d]: the whole sample's kept directions
    inner = W0.mT @ g @ W0 + torch.diag_embed(1.0 - kept)  # identity on the dropped directions
    L, info = torch.linalg.cholesky_ex(inner)
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device).expand_as(L)
    bad = info > 0
    inv = torch.linalg.solve_triangular(torch.where(bad[:, None, None], eye, L), eye, upper=False)
    bad |= ~(1.0 / inv.square().sum((-2, -1)) > REWHITEN_MIN)
    W = W0 @ inv.mT
    if bool(bad.any()):
        w_own, r_own, d_own, lam_own = own()
        pick = lambda a, b: torch.where(bad.view((-1,) + (1,) * (a.ndim - 1)), b, a)  # noqa: E731
        return pick(W, w_own), pick(rank, r_own), pick(d_eff, d_own), pick(lam, lam_own)
    return W, rank, d_eff, lam


def _gram_svdvals(M: torch.Tensor) -> torch.Tensor:
    """Singular values of ``M [..., p, q]`` as square roots of the eigenvalues of its smaller Gram matrix:
    about 8x faster than an SVD for 384 x 768 blocks on a CPU; absolute error about ``eps s_max^2 / (2 s)``
    on a singular value ``s`` (at most ``sqrt(eps) s_max = 1.5e-8 s_max`` near 0), far below a bootstrap's
    spread. Used for bootstrap replicates (CCA family, Procrustes) only."""
    gram = M @ M.mT if M.shape[-2] <= M.shape[-1] else M.mT @ M
    return torch.linalg.eigvalsh(gram).clamp_(min=0.0).sqrt_().flip(-1)


def _svcca_keep(w: torch.Tensor, g: torch.Tensor, rank: torch.Tensor, variance_kept: float):
    """Keep the fewest leading whitened directions holding ``variance_kept`` of the variance (at least one)."""
    # eigenvalues along the kept directions: w_i^T g w_i = 1 / lam_i ... recover lam from the column norms
    norms2 = (w * w).sum(dim=1)  # 1 / lam for kept directions, 0 otherwise
    lam = torch.where(norms2 > 0, 1.0 / norms2.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(norms2))
    frac = lam.cumsum(-1) / lam.sum(-1, keepdim=True)
    need = (frac < variance_kept - 1e-12).sum(-1) + 1
    need = torch.minimum(need, rank).clamp(min=1)
    idx = torch.arange(w.shape[-1], device=w.device)
    keep = (idx[None, :] < need[:, None]).to(w.dtype)
    return w * keep[:, None, :], need


class StreamingMeasure:
    """One streaming measure over all layer pairs: ``update`` chunks, ``merge`` shards, ``compute``.

    Args:
        name: one of :data:`STREAMING_MEASURES`.
        precision: ``"float32"`` (default) or ``"float64"``: the GEMMs of :class:`CrossMoments`.
        options: the measure's options, passed to ``compute``.

    Raises:
        ValueError: ``name`` has no streaming form, an option it does not take, or a bad ``precision``.
    """

    def __init__(self, name: str, *, precision: str = "float32", **options: Any):
        if name not in STREAMING_MEASURES:
            raise ValueError(
                f"no streaming form for measure {name!r}; streaming measures: {', '.join(STREAMING_MEASURES)}"
            )
        _check_options(name, options)
        self.name = name
        self.options = options
        self.moments = CrossMoments(debiased=(name == "debiased_cka"), precision=precision)

    @property
    def n(self) -> int:
        """Rows seen so far."""
        return self.moments.n

    def update(self, x: Any, y: Any) -> "StreamingMeasure":
        """Add a chunk ``x [La, m, da]``, ``y [Lb, m, db]`` (see :meth:`CrossMoments.update`)."""
        self.moments.update(x, y)
        return self

    def merge(self, other: "StreamingMeasure") -> "StreamingMeasure":
        """Add another shard of the same measure (in place) and return self.

        Raises:
            ValueError: a different measure, or the errors of :meth:`CrossMoments.merge`.
        """
        if not isinstance(other, StreamingMeasure) or other.name != self.name:
            raise ValueError(f"can only merge a StreamingMeasure of {self.name!r}")
        self.moments.merge(other.moments)
        return self

    def compute(self) -> torch.Tensor:
        """The measure on all rows seen: ``[La, Lb]`` float64."""
        return self.moments.compute(self.name, **self.options)


class MinibatchCKA:
    """Streaming minibatch CKA (Nguyen, Raghu & Kornblith 2021): each ``update`` is one minibatch.

    Keeps the sums over batches of ``HSIC(K_i, L_i)``, ``HSIC(K_i, K_i)``, ``HSIC(L_i, L_i)`` for all layer
    pairs; ``compute`` returns their CKA ratio. Order of updates and merges does not matter. The sums are
    kept in units of a power of two per layer fixed by the first batch (:func:`_layer_units`: 1 unless its
    values lie beyond ``2^64`` or below ``2^-64``), so rows like 1e200 or 1e-310 neither overflow nor vanish;
    ``compute`` refuses a layer whose rows, over all batches, are identical or differ only by rounding (as
    :func:`~homoscope.measures.cka.minibatch_cka` does), while one batch may hold a constant layer.

    Args:
        debiased: unbiased HSIC per batch (default, as in the paper; batches need >= 4 rows).
    """

    def __init__(self, *, debiased: bool = True):
        self.debiased = bool(debiased)
        self.batches = 0
        self.n = 0
        self.cross = self.hx = self.hy = None
        self.units: tuple[torch.Tensor, torch.Tensor] | None = None  # [La], [Lb] powers of two
        self._ranges: dict | None = None  # column minima and maxima of all rows as given (see CrossMoments)
        self._dtype = F64

    def update(self, x: Any, y: Any) -> "MinibatchCKA":
        """Add one minibatch ``x [La, m, da]``, ``y [Lb, m, db]``.

        Raises:
            ValueError: x or y not a tensor or array of numbers (naming it), non-finite values, differing row
                counts, a batch smaller than the estimator needs, layer counts that differ from earlier batches.
        """
        xs, ys = shape_pair(x, y, names=("x", "y"))  # values are checked where the batch is centered
        check_min_n(xs.shape[1], 4 if self.debiased else 2, "MinibatchCKA batch", "rows per batch for the estimator")
        rx, ry = column_range(xs, "X"), column_range(ys, "Y")  # finiteness
        if self.cross is not None and (xs.shape[0], ys.shape[0]) != tuple(self.cross.shape):
            raise ValueError(f"batch layer counts {(xs.shape[0], ys.shape[0])} disagree with earlier batches "
                             f"{tuple(self.cross.shape)}")
        if self.units is None:
            self.units = (_layer_units(*rx), _layer_units(*ry))
        dtype = _coarser(self._dtype, xs.dtype, ys.dtype)
        xs, ys = (_in_units(t, u) for t, u in ((xs, self.units[0]), (ys, self.units[1])))
        c, hx, hy = minibatch_hsic_terms(xs, ys, self.debiased)
        if self.cross is None:
            self.cross, self.hx, self.hy = c, hx, hy
        else:
            self.cross, self.hx, self.hy = self.cross + c, self.hx + hx, self.hy + hy
        self._ranges, self._dtype = _fold_ranges(self._ranges, rx, ry), dtype
        self.batches += 1
        self.n += xs.shape[1]
        return self

    def merge(self, other: "MinibatchCKA") -> "MinibatchCKA":
        """Add another accumulator's batch sums (in place) and return self.

        Raises:
            ValueError: not a MinibatchCKA, a different estimator (``debiased``), or other layer counts.
        """
        if not isinstance(other, MinibatchCKA):
            raise ValueError(f"can only merge a MinibatchCKA, got {type(other).__name__}")
        if other is self:
            raise ValueError("cannot merge an accumulator into itself: its batches would count twice")
        if other.debiased != self.debiased:
            raise ValueError(
                f"cannot merge a debiased={other.debiased} accumulator into a debiased={self.debiased} one"
            )
        if other.cross is None:
            return self
        if self.cross is not None and self.cross.shape != other.cross.shape:
            raise ValueError(
                f"cannot merge accumulators of {tuple(other.cross.shape)} layer pairs into {tuple(self.cross.shape)}"
            )
        if self.cross is None:
            self.cross, self.hx, self.hy = other.cross.clone(), other.hx.clone(), other.hy.clone()
            self.units = other.units
        else:  # the other's sums in this one's units (powers of two: exact)
            fx, fy = (mine / theirs.to(mine) for mine, theirs in zip(self.units, other.units))
            fx2, fy2 = fx * fx, fy * fy
            self.cross = self.cross + other.cross * fx2[:, None] * fy2[None, :]
            self.hx, self.hy = self.hx + other.hx * fx2 * fx2, self.hy + other.hy * fy2 * fy2
        self._ranges = _fold_ranges(self._ranges, other._ranges["x"], other._ranges["y"])
        self._dtype = _coarser(self._dtype, other._dtype)
        self.batches += other.batches
        self.n += other.n
        return self

    def compute(self) -> torch.Tensor:
        """Minibatch CKA ``[La, Lb]`` float64.

        Raises:
            ValueError: no batches yet, a layer whose rows are identical or differ only by rounding over all
                batches, or a layer whose accumulated self-HSIC is not positive (or overflows).
        """
        if self.cross is None:
            raise ValueError("minibatch_cka: the accumulator is empty (no batches); call update() first")
        for name, side in (("X", "x"), ("Y", "y")):
            check_spread(*self._ranges[side], self._dtype, name, "minibatch_cka", self.n)
        if not all(bool(torch.isfinite(t).all()) for t in (self.cross, self.hx, self.hy)):
            raise ValueError("minibatch_cka: the HSIC sums overflow float64 (batches whose values differ in magnitude "
                             "by more than 2^200 from the first batch's); divide those representations by a constant")
        _check_positive_self(self.hx, "X", "minibatch_cka")
        _check_positive_self(self.hy, "Y", "minibatch_cka")
        lo = -1.0 if self.debiased else 0.0
        return (self.cross / torch.sqrt(self.hx[:, None] * self.hy[None, :])).clamp_(lo, 1.0)


def _in_units(x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """``x [L, m, d]`` times its per-layer power of two ``units [L]`` (in float64 where any is not 1: float32
    cannot hold the factor that lifts its subnormal values); ``x`` itself where all are 1."""
    if bool((units == 1).all()):
        return x
    return x.to(F64) * units.to(x.device)[:, None, None]


__all__ = ["CrossMoments", "MinibatchCKA", "StreamingMeasure", "STREAMING_MEASURES", "STREAMING_OPTIONS"]
