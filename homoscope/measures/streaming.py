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

Memory is dominated by ``X^T Y``: ``La * Lb * da * db`` float64 values (about 1.7 GB for 31 x 19
layers of widths 576 x 640); stream fewer layers at a time when that is too much.

:class:`MinibatchCKA` is the streaming form of :func:`~homoscope.measures.cka.minibatch_cka`
(Nguyen et al. 2021): each update is one minibatch whose HSIC terms are added to running sums.

Example::

    acc = StreamingMeasure("linear_cka")
    for x_chunk, y_chunk in chunks:        # [La, m, da], [Lb, m, db]
        acc.update(x_chunk, y_chunk)
    value = acc.compute()                  # [La, Lb] float64
"""

from __future__ import annotations

from typing import Any

import torch

from . import cca as _cca
from ._validate import as_pair, check_min_n
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

    Args:
        debiased: also keep the sums the unbiased HSIC needs (``debiased_cka``); costs
            ``O(La Lb (da + db))`` more memory.

    Attributes:
        n: rows seen so far.
    """

    def __init__(self, *, debiased: bool = True):
        self.debiased = bool(debiased)
        self.n = 0
        self._shape: tuple[int, int, int, int] | None = None
        for f in _FIELDS + _EXTRA:
            setattr(self, f, None)

    # ------------------------------------------------------------------ accumulation
    def update(self, x: Any, y: Any) -> "CrossMoments":
        """Add a chunk of rows: ``x [La, m, da]`` (or ``[m, da]``), ``y [Lb, m, db]``; any real dtype/device.

        Raises:
            ValueError: non-finite values, row counts that differ, or layer counts / widths that differ
                from earlier chunks.
        """
        xs, ys = as_pair(x, y)
        shape = (xs.shape[0], xs.shape[2], ys.shape[0], ys.shape[2])
        self._check_shape(shape)
        sums = {
            "sx": xs.sum(1),
            "sy": ys.sum(1),
            "cxx": xs.transpose(1, 2) @ xs,
            "cyy": ys.transpose(1, 2) @ ys,
            "cxy": torch.einsum("anp,bnq->abpq", xs, ys),
        }
        if self.debiased:
            a, b = (xs * xs).sum(-1), (ys * ys).sum(-1)  # [La, m], [Lb, m]
            sums.update(
                sa=a.sum(1),
                sb=b.sum(1),
                saa=(a * a).sum(1),
                sbb=(b * b).sum(1),
                sab=a @ b.T,
                sax=torch.einsum("an,and->ad", a, xs),
                sby=torch.einsum("bn,bnd->bd", b, ys),
                say=torch.einsum("an,bnd->abd", a, ys),
                sbx=torch.einsum("bn,and->bad", b, xs),
            )
        self._add(sums, xs.shape[1])
        return self

    def merge(self, other: "CrossMoments") -> "CrossMoments":
        """Add another accumulator's sums into this one (in place) and return self.

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
        device = self.sx.device if self.sx is not None else other.sx.device
        fields = _FIELDS + (_EXTRA if self.debiased else ())
        self._add({f: getattr(other, f).to(device) for f in fields}, other.n)
        return self

    def _check_shape(self, shape) -> None:
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise ValueError(
                f"chunk shape disagrees with earlier chunks: (La, da, Lb, db)={shape}, expected {self._shape}"
            )

    def _add(self, sums: dict, m: int) -> None:
        for f, v in sums.items():
            cur = getattr(self, f)
            setattr(self, f, v.clone() if cur is None else cur + v.to(cur.device))
        self.n += m

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
        for name, g, raw in (("X", gxx, self.cxx), ("Y", gyy, self.cyy)):
            tr = g.diagonal(dim1=-2, dim2=-1).sum(-1)
            scale = raw.diagonal(dim1=-2, dim2=-1).sum(-1)
            bad = (tr <= 64 * EPS * scale * max(self.n, 1)).nonzero().flatten().tolist()
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
        wx, rx, dx = _whitening(gxx, self.cxx, n)
        wy, ry, dy = _whitening(gyy, self.cyy, n)
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


def _whitening(g: torch.Tensor, raw: torch.Tensor, n: int):
    """Whitening maps ``W [L, d, d]`` with ``W^T G W = I`` on the kept directions (others zero columns).

    Constant columns (zero centered variance) are dropped first. Returns ``(W, rank [L], d_eff [L])``.
    """
    d = g.shape[-1]
    diag = g.diagonal(dim1=-2, dim2=-1)
    const = diag <= 64 * EPS * raw.diagonal(dim1=-2, dim2=-1)
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
        xs, ys = as_pair(x, y)
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
        """Add another accumulator's batch sums (in place) and return self."""
        if other.cross is None:
            return self
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
