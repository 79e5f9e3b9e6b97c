"""Exact streaming accumulators: feed rows in chunks, merge shards in any order, compute at the end.

:class:`CrossMoments` keeps only sums over rows, for every layer of X ``[La, ., da]`` and Y
``[Lb, ., db]``:

- ``n``, column sums ``sum x``, ``sum y``, second moments ``X^T X``, ``Y^T Y`` and ``X^T Y``;
- for the unbiased HSIC (``debiased_cka``): with ``a_i = ||x_i||^2`` and ``b_i = ||y_i||^2``, the sums
  of ``a``, ``b``, ``a^2``, ``b^2``, ``a b``, ``a x``, ``b y``, ``a y`` and ``b x``.

Sums commute, so any chunking and any merge order give the same state up to float64 rounding, and
``compute`` equals the one-shot measure within ~1e-10 on well-conditioned data. The measures
available are those of :data:`STREAMING_MEASURES`: ``linear_cka``, ``debiased_cka`` (centering is
applied analytically from the sums), the CCA family (``cca_rho``, ``cca_r2``, ``svcca``, ``pwcca``:
whitened through an eigendecomposition of the centered covariance, directions with eigenvalue below
``max(n, d) * eps * largest`` dropped) and ``procrustes`` / ``procrustes_distance``.

The sums are of rows shifted by the first chunk's column means (see :class:`CrossMoments`), which keeps
them from cancelling when the columns have large means. Memory is dominated by ``X^T Y``:
``La * Lb * da * db`` float64 values (about 1.7 GB for 31 x 19 layers of widths 576 x 640), plus a fixed
float64 workspace of about 64 MiB; it does not grow with the number of chunks. Stream fewer layers at a
time when that is too much.

:class:`MinibatchCKA` is the streaming form of :func:`~homoscope.measures.cka.minibatch_cka`
(Nguyen et al. 2021): each update is one minibatch whose HSIC terms are added to running sums.

Example::

    acc = StreamingMeasure("linear_cka")
    for x_chunk, y_chunk in chunks:        # [La, m, da], [Lb, m, db]
        acc.update(x_chunk, y_chunk)
    value = acc.compute()                  # [La, Lb] float64
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from . import cca as _cca
from ._validate import check_min_n, column_range, shape_pair
from .cka import _check_positive_self, minibatch_hsic_terms

EPS = torch.finfo(torch.float64).eps

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

_FIELDS = ("sx", "sy", "cxx", "cyy", "cxy")
_EXTRA = ("sa", "sb", "saa", "sbb", "sab", "sax", "sby", "say", "sbx")


class CrossMoments:
    """Running sums over rows of two representation stacks (all layers), mergeable in any order.

    The sums are of shifted rows ``u = x - c``, ``v = y - e`` with ``c``, ``e`` the column means of the first
    chunk seen (a fixed per-accumulator shift; :meth:`merge` re-expresses the other accumulator's sums at
    this one's shift). Every measure is invariant to the shift, and it keeps the moment sums from cancelling
    when the columns have large means.

    :meth:`update` allocates the sums and a float64 workspace of ``block_rows`` rows on the first chunk and
    reuses them afterwards: each chunk is processed in blocks of rows, every sum is accumulated in place
    (``addmm_``, ``out=``), and nothing grows with the number of chunks. Per row it costs one
    ``(La da) x (Lb db)`` outer product for ``X^T Y`` and a symmetric rank update of each layer's own
    ``da x da`` (``db x db``) block; cross-layer blocks ``X_a^T X_b`` are never formed.

    Args:
        debiased: also keep the sums the unbiased HSIC needs (``debiased_cka``); costs
            ``O(La Lb (da + db))`` more memory.
        block_rows: rows per block of the float64 workspace; default: as many as fit in about 64 MiB
            (between 256 and 4096).

    Attributes:
        n: rows seen so far.
    """

    def __init__(self, *, debiased: bool = True, block_rows: int | None = None):
        if block_rows is not None and (not isinstance(block_rows, int) or block_rows < 1):
            raise ValueError(f"block_rows must be a positive integer or None; got block_rows={block_rows!r}")
        self.debiased = bool(debiased)
        self.block_rows = block_rows
        self.n = 0
        self._shape: tuple[int, int, int, int] | None = None
        self._device: torch.device | None = None
        # shifts [La, da], [Lb, db]; sums of u, v: [La, da], [Lb, db]; u^T u [La, da, da] and v^T v
        # [Lb, db, db] (only the upper triangle is kept up to date); u^T v [La, Lb, da, db]
        self._cx = self._cy = self._sx = self._sy = self._cxx = self._cyy = self._cxy = None
        # debiased: w = [a_1..a_La, b_1..b_Lb] per row (a = ||u||^2, b = ||v||^2): sums of w [La+Lb],
        # w w^T [La+Lb, La+Lb], w u^T [La+Lb, La, da], w v^T [La+Lb, Lb, db]; blocks the measures do not
        # use (a_a a_a', a_a u_a' for a != a', ...) are accumulated but never read
        self._w1 = self._ww = self._wx = self._wy = None
        self._ws: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ accumulation
    def update(self, x: Any, y: Any) -> "CrossMoments":
        """Add a chunk of rows: ``x [La, m, da]`` (or ``[m, da]``), ``y [Lb, m, db]``; any real dtype/device.

        The chunk is validated in its own dtype and converted to float64 one block of rows at a time.

        Raises:
            ValueError: non-finite values, row counts that differ, or layer counts / widths that differ
                from earlier chunks.
        """
        dt = _chunk_dtype(x, y)
        xs, ys = shape_pair(x, y)
        xs, ys = xs.to(dtype=dt), ys.to(dtype=dt)
        column_range(xs, "X")  # finiteness, without a mask of the chunk's size
        column_range(ys, "Y")
        shape = (xs.shape[0], xs.shape[2], ys.shape[0], ys.shape[2])
        self._check_shape(shape)
        if self._device is not None and xs.device != self._device:
            xs, ys = xs.to(self._device), ys.to(self._device)
        if self._cxy is None:
            self._allocate(shape, xs.device, xs.mean(1, dtype=torch.float64), ys.mean(1, dtype=torch.float64))
        m = xs.shape[1]
        step = self._ws["u"].shape[1]
        for r in range(0, m, step):
            self._add_block(xs[:, r : r + step], ys[:, r : r + step])
        self.n += m
        return self

    def _allocate(self, shape, device, cx: torch.Tensor, cy: torch.Tensor) -> None:
        La, da, Lb, db = shape
        f64 = dict(dtype=torch.float64, device=device)
        self._device = device
        self._cx, self._cy = cx.to(**f64).clone(), cy.to(**f64).clone()
        self._sx, self._sy = torch.zeros(La, da, **f64), torch.zeros(Lb, db, **f64)
        self._cxx, self._cyy = torch.zeros(La, da, da, **f64), torch.zeros(Lb, db, db, **f64)
        self._cxy = torch.zeros(La, Lb, da, db, **f64)
        B = self.block_rows or max(256, min(4096, (1 << 23) // (La * da + Lb * db) // 256 * 256))
        self._ws = {"u": torch.empty(La, B, da, **f64), "v": torch.empty(Lb, B, db, **f64),
                    "s": torch.empty(La + Lb if self.debiased else 0, **f64)}
        if self.debiased:
            W = La + Lb
            self._w1, self._ww = torch.zeros(W, **f64), torch.zeros(W, W, **f64)
            self._wx, self._wy = torch.zeros(W, La, da, **f64), torch.zeros(W, Lb, db, **f64)
            self._ws["w"] = torch.empty(W, B, **f64)
            self._ws["sq"] = torch.empty(B, max(da, db), **f64)

    def _add_block(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """Accumulate one block of rows ``xb [La, b, da]``, ``yb [Lb, b, db]`` (b <= block rows) in place."""
        La, b, _ = xb.shape
        Lb = yb.shape[0]
        ws = self._ws
        u, v = ws["u"][:, :b], ws["v"][:, :b]
        u.copy_(xb).sub_(self._cx[:, None, :])  # float64 workspace, shifted
        v.copy_(yb).sub_(self._cy[:, None, :])
        self._sx.add_(u.sum(1))
        self._sy.add_(v.sum(1))
        with _one_blas_thread():
            for a in range(La):
                _syrk_(self._cxx[a], u[a])
            for c in range(Lb):
                _syrk_(self._cyy[c], v[c])
        for a in range(La):
            for c in range(Lb):
                self._cxy[a, c].addmm_(u[a].T, v[c])
        if not self.debiased:
            return
        w, sq = ws["w"][:, :b], ws["sq"][:b]
        for i, z in enumerate(list(u) + list(v)):  # w_i = squared row norms of each layer
            s = sq[:, : z.shape[1]]
            torch.mul(z, z, out=s)
            torch.sum(s, 1, out=w[i])
        torch.sum(w, 1, out=ws["s"])
        self._w1.add_(ws["s"])
        self._ww.addmm_(w, w.T)
        for a in range(La):
            self._wx[:, a].addmm_(w, u[a])
        for c in range(Lb):
            self._wy[:, c].addmm_(w, v[c])

    def merge(self, other: "CrossMoments") -> "CrossMoments":
        """Add another accumulator's sums into this one (in place) and return self.

        The other's sums are re-expressed at this accumulator's shift first (exact algebra on the sums).

        Raises:
            ValueError: different layer counts / widths, or one accumulator lacks the debiased sums.
        """
        if not isinstance(other, CrossMoments):
            raise TypeError(f"can only merge a CrossMoments; got {type(other).__name__}")
        if other.n == 0:
            return self
        if self.debiased and not other.debiased:
            raise ValueError("cannot merge: other was built with debiased=False, so it lacks the debiased sums")
        self._check_shape(other._shape)
        if self._cxy is None:
            self._allocate(other._shape, other._device, other._cx, other._cy)
        dev = self._device
        s = _reshift(other, self._cx.to(other._device), self._cy.to(other._device), self.debiased)
        s = {k: t.to(dev) for k, t in s.items()}
        La = self._shape[0]
        self._sx.add_(s["sx"])
        self._sy.add_(s["sy"])
        self._cxx.add_(s["cxx"])
        self._cyy.add_(s["cyy"])
        self._cxy.add_(s["cxy"])
        if self.debiased:
            self._w1[:La].add_(s["sa"])
            self._w1[La:].add_(s["sb"])
            dw = self._ww.diagonal()
            dw[:La].add_(s["saa"])
            dw[La:].add_(s["sbb"])
            self._ww[:La, La:].add_(s["sab"])
            self._wx[:La].diagonal(dim1=0, dim2=1).add_(s["sax"].T)
            self._wx[La:].add_(s["sbx"])
            self._wy[:La].add_(s["say"])
            self._wy[La:].diagonal(dim1=0, dim2=1).add_(s["sby"].T)
        self.n += other.n
        return self

    def _check_shape(self, shape) -> None:
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise ValueError(
                f"chunk shape disagrees with earlier chunks: (La, da, Lb, db)={shape}, expected {self._shape}"
            )

    # ------------------------------------------------------------------ the sums (of shifted rows)
    @property
    def sx(self) -> torch.Tensor:
        """``sum u`` ``[La, da]``."""
        return self._sx

    @property
    def sy(self) -> torch.Tensor:
        """``sum v`` ``[Lb, db]``."""
        return self._sy

    @property
    def cxx(self) -> torch.Tensor:
        """``sum u u^T`` per layer ``[La, da, da]`` (a new symmetric tensor)."""
        return _symmetric(self._cxx)

    @property
    def cyy(self) -> torch.Tensor:
        """``sum v v^T`` per layer ``[Lb, db, db]`` (a new symmetric tensor)."""
        return _symmetric(self._cyy)

    @property
    def cxy(self) -> torch.Tensor:
        """``sum u v^T`` for every layer pair ``[La, Lb, da, db]``."""
        return self._cxy

    @property
    def sa(self) -> torch.Tensor:
        """``sum a`` ``[La]`` with ``a = ||u||^2``."""
        return self._w1[: self._shape[0]]

    @property
    def sb(self) -> torch.Tensor:
        """``sum b`` ``[Lb]`` with ``b = ||v||^2``."""
        return self._w1[self._shape[0] :]

    @property
    def saa(self) -> torch.Tensor:
        """``sum a^2`` ``[La]``."""
        return self._ww.diagonal()[: self._shape[0]]

    @property
    def sbb(self) -> torch.Tensor:
        """``sum b^2`` ``[Lb]``."""
        return self._ww.diagonal()[self._shape[0] :]

    @property
    def sab(self) -> torch.Tensor:
        """``sum a b`` ``[La, Lb]``."""
        La = self._shape[0]
        return self._ww[:La, La:]

    @property
    def sax(self) -> torch.Tensor:
        """``sum a u`` ``[La, da]`` (layer with itself)."""
        return self._wx[: self._shape[0]].diagonal(dim1=0, dim2=1).T

    @property
    def sbx(self) -> torch.Tensor:
        """``sum b u`` ``[Lb, La, da]``."""
        return self._wx[self._shape[0] :]

    @property
    def say(self) -> torch.Tensor:
        """``sum a v`` ``[La, Lb, db]``."""
        return self._wy[: self._shape[0]]

    @property
    def sby(self) -> torch.Tensor:
        """``sum b v`` ``[Lb, db]`` (layer with itself)."""
        return self._wy[self._shape[0] :].diagonal(dim1=0, dim2=1).T

    def _raw_diag(self, side: str) -> torch.Tensor:
        """``sum x_j^2`` of the unshifted rows per column, ``[L, d]`` (scale for the constant-column rules)."""
        c, s, m = (self._cx, self._sx, self._cxx) if side == "x" else (self._cy, self._sy, self._cyy)
        return (m.diagonal(dim1=-2, dim2=-1) + 2 * c * s + self.n * c * c).clamp_(min=0.0)

    # ------------------------------------------------------------------ derived quantities
    def centered(self):
        """Centered second moments ``(Gxx [La,da,da], Gyy [Lb,db,db], Gxy [La,Lb,da,db])`` (sums, not /n)."""
        n = self.n
        mx, my = self.sx / n, self.sy / n
        gxx = self.cxx - n * mx[:, :, None] * mx[:, None, :]
        gyy = self.cyy - n * my[:, :, None] * my[:, None, :]
        gxy = self.cxy - n * mx[:, None, :, None] * my[None, :, None, :]
        return gxx, gyy, gxy

    def _check(self, measure: str, min_n: int, why: str) -> None:
        if self.n == 0:
            raise ValueError(f"{measure}: the accumulator is empty (n=0); call update() first")
        check_min_n(self.n, min_n, measure, why)
        gxx, gyy, _ = self.centered()
        for name, g, raw in (("X", gxx, self._raw_diag("x")), ("Y", gyy, self._raw_diag("y"))):
            tr = g.diagonal(dim1=-2, dim2=-1).sum(-1)
            scale = raw.sum(-1)
            bad = (tr <= 64 * EPS * scale).nonzero().flatten().tolist()
            if bad:
                raise ValueError(
                    f"{name} layer {bad[0]} has zero variance after centering (all {self.n} rows are identical); "
                    f"{measure} is undefined for a constant layer"
                )

    def _unbiased_terms(self, gxx, gyy, gxy):
        n = self.n
        mx, my = self.sx / n, self.sy / n
        px, py = (mx * mx).sum(-1), (my * my).sum(-1)  # ||mu||^2 [La], ||nu||^2 [Lb]
        # sum_i k_i l_i with k_i = ||x_i - mu||^2, l_i = ||y_i - nu||^2, expanded into the stored sums
        kl = (
            self.sab
            - 2 * torch.einsum("abd,bd->ab", self.say, my)
            - 2 * torch.einsum("bad,ad->ab", self.sbx, mx)
            + 4 * torch.einsum("ap,abpq,bq->ab", mx, self.cxy, my)
            + py[None, :] * self.sa[:, None]
            + px[:, None] * self.sb[None, :]
            - 3 * n * px[:, None] * py[None, :]
        )
        kk = (
            self.saa
            - 4 * (self.sax * mx).sum(-1)
            + 4 * torch.einsum("ap,apq,aq->a", mx, self.cxx, mx)
            + 2 * px * self.sa
            - 3 * n * px * px
        )
        ll = (
            self.sbb
            - 4 * (self.sby * my).sum(-1)
            + 4 * torch.einsum("bp,bpq,bq->b", my, self.cyy, my)
            + 2 * py * self.sb
            - 3 * n * py * py
        )
        sk, sl = self.sa - n * px, self.sb - n * py
        cross = (gxy * gxy).sum(dim=(-2, -1))
        sx, sy = (gxx * gxx).sum(dim=(-2, -1)), (gyy * gyy).sum(dim=(-2, -1))
        return unbiased_from_sums(cross, sx, sy, kl, kk, ll, sk, sl, n)

    # ------------------------------------------------------------------ measures
    def compute(self, name: str, **options: Any) -> torch.Tensor:
        """The measure ``name`` from the sums: ``[La, Lb]`` float64.

        Args:
            name: one of :data:`STREAMING_MEASURES`.
            options: the measure's options (``variance_kept`` for svcca, ``weights_from`` for pwcca).

        Raises:
            ValueError: unknown/unsupported name, an empty or too small accumulator, a constant layer,
                the CCA rule n > d, or a debiased measure on an accumulator built with debiased=False.
        """
        if name not in STREAMING_MEASURES:
            raise ValueError(
                f"no streaming form for measure {name!r}; streaming measures: {', '.join(STREAMING_MEASURES)}"
            )
        if name == "linear_cka":
            _no_options(name, options)
            self._check(name, 2, "centering needs two rows")
            gxx, gyy, gxy = self.centered()
            cross = (gxy * gxy).sum(dim=(-2, -1))
            sx, sy = (gxx * gxx).sum(dim=(-2, -1)), (gyy * gyy).sum(dim=(-2, -1))
            return (cross / torch.sqrt(sx[:, None] * sy[None, :])).clamp_(0.0, 1.0)
        if name == "debiased_cka":
            _no_options(name, options)
            if not self.debiased:
                raise ValueError("debiased_cka needs an accumulator built with debiased=True")
            self._check(name, 4, "the unbiased HSIC estimator divides by n-3")
            cross_u, hx, hy = self._unbiased_terms(*self.centered())
            _check_positive_self(hx, "X", name)
            _check_positive_self(hy, "Y", name)
            return (cross_u / torch.sqrt(hx[:, None] * hy[None, :])).clamp_(-1.0, 1.0)
        if name in ("procrustes", "procrustes_distance"):
            _no_options(name, options)
            self._check(name, 2, "centering needs two rows")
            gxx, gyy, gxy = self.centered()
            tx = gxx.diagonal(dim1=-2, dim2=-1).sum(-1)
            ty = gyy.diagonal(dim1=-2, dim2=-1).sum(-1)
            nuc = torch.linalg.svdvals(gxy).sum(-1) / torch.sqrt(tx[:, None] * ty[None, :])
            sim = nuc.clamp_(0.0, 1.0)
            return sim if name == "procrustes" else (2.0 - 2.0 * sim).clamp_(0.0, 2.0)
        return self._cca(name, **options)

    def _cca(self, name: str, *, variance_kept: float = 0.99, weights_from: str = "x") -> torch.Tensor:
        self._check(name, 2, "centering needs two rows")
        if name == "svcca" and (not isinstance(variance_kept, (int, float)) or not 0.0 < float(variance_kept) <= 1.0):
            raise ValueError(f"svcca: variance_kept must be in (0, 1]; got variance_kept={variance_kept!r}")
        if name == "pwcca" and weights_from not in ("x", "y"):
            raise ValueError(f"pwcca: weights_from must be 'x' or 'y'; got weights_from={weights_from!r}")
        n = self.n
        gxx, gyy, gxy = self.centered()
        wx, rx, dx = _whitening(gxx, self._raw_diag("x"), n)
        wy, ry, dy = _whitening(gyy, self._raw_diag("y"), n)
        if name == "svcca":
            wx, rx = _svcca_keep(wx, gxx, rx, float(variance_kept))
            wy, ry = _svcca_keep(wy, gyy, ry, float(variance_kept))
        else:
            for side, d in (("x", dx), ("y", dy)):
                if n <= int(d.max()):
                    raise ValueError(
                        f"{name} needs more rows than non-constant columns (n > max(d_x, d_y)): n={n} <= "
                        f"d_{side}={int(d.max())}; canonical correlations would be forced to 1. Use more rows, "
                        "or svcca to reduce dimensions first"
                    )
        _cca._warn_forced(n, rx, ry, name)
        count = torch.minimum(rx[:, None], ry[None, :]).to(torch.float64)
        M = torch.einsum("apr,abpq,bqs->abrs", wx, gxy, wy)  # whitened cross-covariance
        if name == "cca_r2":
            return ((M * M).sum(dim=(-2, -1)) / count).clamp_(0.0, 1.0)
        if name in ("cca_rho", "svcca"):
            return (torch.linalg.svdvals(M).clamp_(0.0, 1.0).sum(-1) / count).clamp_(0.0, 1.0)
        # pwcca
        if weights_from == "y":
            M, wx, gxx, rx, ry = M.transpose(0, 1).transpose(-1, -2), wy, gyy, ry, rx
            count = count.T
        P, rho, _ = torch.linalg.svd(M, full_matrices=False)
        rho = rho.clamp(0.0, 1.0)
        # <h_i, z_j> = (Gxx W p_i)_j for the canonical variate h_i = Xc W p_i
        proj = torch.einsum("ajq,aqr,abri->abij", gxx, wx, P).abs().sum(dim=-1)
        m = rho.shape[-1]
        valid = torch.arange(m, device=M.device)[None, None, :] < count[..., None]
        w = proj * valid
        w = w / w.sum(dim=-1, keepdim=True)
        out = (w * rho).sum(-1).clamp_(0.0, 1.0)
        return out if weights_from == "x" else out.T.contiguous()


def unbiased_from_sums(cross, sx, sy, kl, kk, ll, sk, sl, n: int):
    """Unbiased HSIC terms (times n(n-3)) from sums: ``<K,L>``, ``sum k l``, ``sum k^2``, ``sum k`` ...

    Same algebra as :func:`homoscope.measures.cka.unbiased_from_terms` with the diagonals summarised.
    """
    c1 = n / (n - 2)
    c2 = 1.0 / ((n - 1) * (n - 2))
    cross_u = cross - c1 * kl + c2 * sk[:, None] * sl[None, :]
    hx = sx - c1 * kk + c2 * sk * sk
    hy = sy - c1 * ll + c2 * sl * sl
    return cross_u, hx, hy


def _no_options(name: str, options: dict) -> None:
    if options:
        raise TypeError(f"{name} takes no options in streaming form; got {sorted(options)}")


def _chunk_dtype(*arrays: Any) -> torch.dtype:
    """The dtype a chunk is validated in: its own floating dtype (promoted across x and y), else float64."""
    dt = None
    for a in arrays:
        d = a.dtype if isinstance(a, torch.Tensor) else None
        if d is None or not d.is_floating_point:
            return torch.float64
        dt = d if dt is None else torch.promote_types(dt, d)
    return dt


def _symmetric(m: torch.Tensor) -> torch.Tensor:
    """The symmetric matrices whose upper triangles are those of ``m [..., d, d]``."""
    return torch.triu(m) + torch.triu(m, 1).mT


try:  # symmetric rank-k update (half the flops of a GEMM) for CPU float64
    from scipy.linalg.blas import dsyrk as _dsyrk
except ImportError:  # pragma: no cover - scipy is a dependency
    _dsyrk = None

_BLAS_CONTROL: list = []


def _one_blas_thread():
    """Context in which scipy's BLAS runs on one thread.

    Its worker threads busy-wait after each call and would compete with torch's threads for the cores
    (measured on 2 cores: one-thread ``dsyrk`` cut the update's CPU time by ~20% against threaded ``dsyrk``
    and against a torch GEMM of the full square). A no-op where threadpoolctl is missing.
    """
    if _dsyrk is None:
        return contextlib.nullcontext()
    if not _BLAS_CONTROL:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROL.append(ThreadpoolController())
        except Exception:  # pragma: no cover - threadpoolctl comes with scikit-learn
            _BLAS_CONTROL.append(None)
    ctl = _BLAS_CONTROL[0]
    return contextlib.nullcontext() if ctl is None else ctl.limit(limits=1, user_api="blas")


def _syrk_(c: torch.Tensor, a: torch.Tensor) -> None:
    """``c += a^T a`` in place, at least on the upper triangle; ``c [d, d]``, ``a [b, d]``, float64."""
    if _dsyrk is not None and c.device.type == "cpu" and c.is_contiguous() and a.is_contiguous():
        # numpy views: c.T and a.T are Fortran-ordered, so BLAS works on the tensors' own memory; Fortran's
        # lower triangle of c.T is the upper triangle of c
        ct = c.numpy().T
        out = _dsyrk(1.0, a.numpy().T, beta=1.0, c=ct, trans=0, lower=1, overwrite_c=1)
        if not np.shares_memory(out, ct):  # pragma: no cover - a copy was made; keep the result anyway
            ct[...] = out
        return
    c.addmm_(a.T, a)


def _reshift(o: CrossMoments, cx: torch.Tensor, cy: torch.Tensor, debiased: bool) -> dict:
    """The sums of accumulator ``o`` re-expressed for rows shifted by ``cx``, ``cy`` instead of ``o``'s shift.

    With ``u = u' + dx`` (``dx = c' - c``) every sum of the new rows is a polynomial in ``dx`` of sums of
    the old ones, all of which are kept.
    """
    n = o.n
    sx, sy, cxx, cyy, cxy = o.sx, o.sy, o.cxx, o.cyy, o.cxy
    dx, dy = o._cx - cx, o._cy - cy  # [La, da], [Lb, db]
    if not (bool(dx.any()) or bool(dy.any())):
        out = dict(sx=sx, sy=sy, cxx=cxx, cyy=cyy, cxy=cxy)
        if debiased:
            out.update(sa=o.sa, sb=o.sb, saa=o.saa, sbb=o.sbb, sab=o.sab, sax=o.sax, sby=o.sby, say=o.say, sbx=o.sbx)
        return out
    out = dict(
        sx=sx + n * dx,
        sy=sy + n * dy,
        cxx=cxx + sx[:, :, None] * dx[:, None, :] + dx[:, :, None] * sx[:, None, :] + n * dx[:, :, None] * dx[:, None, :],
        cyy=cyy + sy[:, :, None] * dy[:, None, :] + dy[:, :, None] * sy[:, None, :] + n * dy[:, :, None] * dy[:, None, :],
        cxy=cxy
        + sx[:, None, :, None] * dy[None, :, None, :]
        + dx[:, None, :, None] * sy[None, :, None, :]
        + n * dx[:, None, :, None] * dy[None, :, None, :],
    )
    if not debiased:
        return out
    # p = dx.u', q = dy.v' per row; P = ||dx||^2, Q = ||dy||^2; new a = a' + 2p + P, b = b' + 2q + Q
    P, Q = (dx * dx).sum(-1), (dy * dy).sum(-1)  # [La], [Lb]
    sp, sq = (dx * sx).sum(-1), (dy * sy).sum(-1)  # sum p, sum q
    cdx = torch.einsum("apq,aq->ap", cxx, dx)  # sum p u'  [La, da]
    cdy = torch.einsum("bpq,bq->bp", cyy, dy)  # sum q v'  [Lb, db]
    spp, sqq = (dx * cdx).sum(-1), (dy * cdy).sum(-1)  # sum p^2, sum q^2
    xq = torch.einsum("abpq,bq->abp", cxy, dy)  # sum q_b u'_a  [La, Lb, da]
    py = torch.einsum("abpq,ap->abq", cxy, dx)  # sum p_a v'_b  [La, Lb, db]
    spq = torch.einsum("abp,ap->ab", xq, dx)  # sum p_a q_b
    sa0, sb0 = o.sa, o.sb
    sax0, sby0, say0, sbx0 = o.sax, o.sby, o.say, o.sbx
    sap = (dx * sax0).sum(-1)  # sum a' p
    sbq = (dy * sby0).sum(-1)  # sum b' q
    saq = torch.einsum("abd,bd->ab", say0, dy)  # sum a'_a q_b
    sbp = torch.einsum("bad,ad->ab", sbx0, dx)  # sum b'_b p_a
    sa = sa0 + 2 * sp + n * P
    sb = sb0 + 2 * sq + n * Q
    out.update(
        sa=sa,
        sb=sb,
        saa=o.saa + 4 * spp + n * P * P + 4 * sap + 2 * P * sa0 + 4 * P * sp,
        sbb=o.sbb + 4 * sqq + n * Q * Q + 4 * sbq + 2 * Q * sb0 + 4 * Q * sq,
        sab=o.sab
        + 2 * saq
        + Q[None, :] * sa0[:, None]
        + 2 * sbp
        + 4 * spq
        + 2 * Q[None, :] * sp[:, None]
        + P[:, None] * sb0[None, :]
        + 2 * P[:, None] * sq[None, :]
        + n * P[:, None] * Q[None, :],
        sax=sax0 + 2 * cdx + P[:, None] * sx + dx * sa[:, None],
        sby=sby0 + 2 * cdy + Q[:, None] * sy + dy * sb[:, None],
        say=say0 + 2 * py + P[:, None, None] * sy[None, :, :] + dy[None, :, :] * sa[:, None, None],
        sbx=sbx0 + 2 * xq.transpose(0, 1) + Q[:, None, None] * sx[None, :, :] + dx[None, :, :] * sb[:, None, None],
    )
    return out


def _whitening(g: torch.Tensor, raw_diag: torch.Tensor, n: int):
    """Whitening maps ``W [L, d, d]`` with ``W^T G W = I`` on the kept directions (others zero columns).

    Constant columns (zero centered variance) are dropped first. Returns ``(W, rank [L], d_eff [L])``.
    """
    d = g.shape[-1]
    diag = g.diagonal(dim1=-2, dim2=-1)
    const = diag <= 64 * EPS * raw_diag
    mask = (~const).to(g.dtype)
    g = g * mask[:, :, None] * mask[:, None, :]
    lam, V = torch.linalg.eigh(g)  # ascending
    lam, V = lam.flip(-1), V.flip(-1)
    keep = lam > max(n, d) * EPS * lam[:, :1]
    inv = torch.where(keep, lam.clamp(min=torch.finfo(torch.float64).tiny).rsqrt(), torch.zeros_like(lam))
    return V * inv[:, None, :], keep.sum(-1), (~const).sum(-1)


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
        options: the measure's options, passed to ``compute``.

    Raises:
        ValueError: ``name`` has no streaming form.
    """

    def __init__(self, name: str, **options: Any):
        if name not in STREAMING_MEASURES:
            raise ValueError(
                f"no streaming form for measure {name!r}; streaming measures: {', '.join(STREAMING_MEASURES)}"
            )
        self.name = name
        self.options = options
        self.moments = CrossMoments(debiased=(name == "debiased_cka"))

    @property
    def n(self) -> int:
        """Rows seen so far."""
        return self.moments.n

    def update(self, x: Any, y: Any) -> "StreamingMeasure":
        """Add a chunk ``x [La, m, da]``, ``y [Lb, m, db]`` (see :meth:`CrossMoments.update`)."""
        self.moments.update(x, y)
        return self

    def merge(self, other: "StreamingMeasure") -> "StreamingMeasure":
        """Add another shard of the same measure (in place) and return self."""
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
    pairs; ``compute`` returns their CKA ratio. Order of updates and merges does not matter.

    Args:
        debiased: unbiased HSIC per batch (default, as in the paper; batches need >= 4 rows).
    """

    def __init__(self, *, debiased: bool = True):
        self.debiased = bool(debiased)
        self.batches = 0
        self.n = 0
        self.cross = self.hx = self.hy = None

    def update(self, x: Any, y: Any) -> "MinibatchCKA":
        """Add one minibatch ``x [La, m, da]``, ``y [Lb, m, db]``.

        Raises:
            ValueError: non-finite values, differing row counts, a batch smaller than the estimator needs.
        """
        xs, ys = shape_pair(x, y)  # values are checked where the batch is centered
        check_min_n(xs.shape[1], 4 if self.debiased else 2, "MinibatchCKA batch", "rows per batch for the estimator")
        c, hx, hy = minibatch_hsic_terms(xs, ys, self.debiased)
        if self.cross is None:
            self.cross, self.hx, self.hy = c, hx, hy
        else:
            if c.shape != self.cross.shape:
                raise ValueError(
                    f"batch layer counts {tuple(c.shape)} disagree with earlier batches {tuple(self.cross.shape)}"
                )
            self.cross, self.hx, self.hy = self.cross + c, self.hx + hx, self.hy + hy
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
        else:
            self.cross, self.hx, self.hy = self.cross + other.cross, self.hx + other.hx, self.hy + other.hy
        self.batches += other.batches
        self.n += other.n
        return self

    def compute(self) -> torch.Tensor:
        """Minibatch CKA ``[La, Lb]`` float64.

        Raises:
            ValueError: no batches yet, or a layer whose accumulated self-HSIC is not positive.
        """
        if self.cross is None:
            raise ValueError("minibatch_cka: the accumulator is empty (no batches); call update() first")
        _check_positive_self(self.hx, "X", "minibatch_cka")
        _check_positive_self(self.hy, "Y", "minibatch_cka")
        lo = -1.0 if self.debiased else 0.0
        return (self.cross / torch.sqrt(self.hx[:, None] * self.hy[None, :])).clamp_(lo, 1.0)


__all__ = ["CrossMoments", "MinibatchCKA", "StreamingMeasure", "STREAMING_MEASURES", "unbiased_from_sums"]
