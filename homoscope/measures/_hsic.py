"""Linear-kernel HSIC terms for all layer pairs: the compute core of linear, debiased and minibatch CKA.

For column-centered stacks ``Xc [La, n, da]`` and ``Yc [Lb, n, db]`` with Grams ``K_a = Xc_a Xc_a^T``
and ``L_b = Yc_b Yc_b^T``, :func:`linear_terms` returns

- ``cross [La, Lb] = <K_a, L_b>_F = ||Xc_a^T Yc_b||_F^2``,
- ``sx [La] = ||K_a||_F^2``, ``sy [Lb] = ||L_b||_F^2``,
- ``kx [La, n] = diag K_a`` and ``ky [Lb, n] = diag L_b`` (row squared norms),

all float64, each layer of X in units of a power of two ``s_a`` (and Y of ``t_b``), which every CKA
ratio cancels exactly.

Precision. The column means are taken in float64 and subtracted in float64, so a common offset of the
features never reaches a low-precision product (that offset is what breaks float32 CKA codes that work
on uncentered Grams). Each centered layer is scaled by a power of two so that its largest entry lies in
[0.5, 1): exact, and it keeps every product of inputs of any magnitude (1e-150 .. 1e150) normal.
``precision="float32"`` (default) then runs the GEMMs in float32 on the centered data and accumulates
every reduction in float64 over float32 partial sums (Gram route: at most :data:`F32_PARTIAL` terms;
feature route: :data:`FEATURE_ROWS` rows), which keeps CKA within about 1e-7 of the float64 value; problems with fewer than 256 rows or fewer rows
than half the width run float64 GEMMs instead (:func:`gemm_dtype`). ``precision="float64"`` runs
everything in float64 (about 1e-12).

Routes (same value up to the precision's rounding):

- ``gram``: ``n x n`` Grams in ``B x B`` blocks; only blocks on and above the diagonal are formed
  (``K`` is symmetric), so the route costs ``n^2 (La da + Lb db)`` flops, half of full Grams, and holds
  ``O((La + Lb) B^2)`` memory, not ``O((La + Lb) n^2)``.
- ``feature``: ``Xc^T Yc`` for all layer pairs as one GEMM per chunk of rows, ``2 n La da Lb db`` flops,
  ``O(La da Lb db)`` memory, accumulated in float64 across row chunks; cheaper when ``n`` is larger
  than about ``2 La da Lb db / (La da + Lb db)``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from . import _linalg as la
from ._validate import check_spread, column_range

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
ROUTES = ("auto", "gram", "feature")

# Gram route: rows per block (blocks of near-equal size; one block when n is small).
GRAM_BLOCK = 256
# float32 mode: the longest run of terms summed in float32 before the partial sum goes to float64.
F32_PARTIAL = 1024
# Feature route: rows per chunk, and the largest float64 cross-product accumulator kept at once (X layers
# are taken in groups when [La da, Lb db] would exceed it).
FEATURE_ROWS = 4096
FEATURE_ACC_BYTES = 2**30

# Unbiased terms computed with float32 GEMMs are recomputed in float64 when the estimator's subtractions
# magnify their error more than this (float32 terms are good to ~1e-7 relative; see unbiased_amplification).
MAX_AMPLIFICATION = 8.0

# precision="float32" runs float64 GEMMs below this many rows, or for products this small (n^2 (da + db)
# per layer pair: milliseconds in float64, and narrow layers get no averaging of float32 rounding).
FLOAT32_MIN_ROWS = 256
FLOAT32_MIN_FLOPS = 2e8



class Centering(NamedTuple):
    """Float64 column means ``mu [L, 1, d]`` and power-of-two layer scales ``scale [L, 1, 1]``."""

    mu: torch.Tensor
    scale: torch.Tensor


class Terms(NamedTuple):
    cross: torch.Tensor
    sx: torch.Tensor
    sy: torch.Tensor
    kx: torch.Tensor
    ky: torch.Tensor


def gemm_dtype(precision: str, n: int, da: int, db: int) -> torch.dtype:
    """GEMM dtype of ``precision`` for ``n`` rows of widths ``da``, ``db``.

    ``'float32'`` runs float32 GEMMs only where they keep the 1e-6 promise: at ``n >= FLOAT32_MIN_ROWS``,
    ``n >= max(da, db) / 2`` and ``n^2 (da + db) >= FLOAT32_MIN_FLOPS`` (narrow layers: one dominant
    product gets no averaging of float32 rounding, and float64 costs milliseconds there). Below that the unbiased estimator subtracts terms far larger than the
    result (its bias correction grows with d / n) and float32 rounding would reach ~1e-5, while the float64
    GEMMs cost little at that size.

    Raises:
        ValueError: ``precision`` not ``'float32'`` or ``'float64'``.
    """
    dtype = check_precision(precision)
    if dtype == torch.float32 and (n < FLOAT32_MIN_ROWS or 2 * n < max(da, db) or n * n * (da + db) < FLOAT32_MIN_FLOPS):
        return torch.float64
    return dtype


def check_precision(precision: Any) -> torch.dtype:
    """Return the GEMM dtype of ``precision``.

    Raises:
        ValueError: ``precision`` not ``'float32'`` or ``'float64'``.
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}; got precision={precision!r}")
    return PRECISIONS[precision]


def choose_route(n: int, La: int, da: int, Lb: int, db: int, route: str = "auto") -> str:
    """Pick ``'gram'`` or ``'feature'`` by flops: ``n^2 (La da + Lb db)`` against ``2 n La da Lb db``.

    Raises:
        ValueError: ``route`` not one of ``'auto'``, ``'gram'``, ``'feature'``.
    """
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}; got route={route!r}")
    if route != "auto":
        return route
    gram_cost = n * n * (La * da + Lb * db) + 2 * n * n * La * Lb
    feat_cost = 2 * n * La * da * Lb * db + 2 * n * (La * da * da + Lb * db * db)
    return "gram" if gram_cost <= feat_cost else "feature"


def column_means(X: torch.Tensor) -> torch.Tensor:
    """Float64 column means ``[L, 1, d]`` of a finite stack ``[L, n, d]`` (scaled sums where float64 could overflow)."""
    n = X.shape[1]
    if X.dtype == torch.float64:
        big = X.abs().amax(dim=(1, 2)) if X.numel() else torch.zeros(X.shape[0], dtype=X.dtype)
        if bool((big > 2.0**900).any()):
            _, e = torch.frexp(big)
            pre = torch.ldexp(torch.ones_like(big), -e)[:, None]
            return (torch.stack([(X[a] * pre[a]).sum(dim=0) for a in range(X.shape[0])]) / n / pre)[:, None, :]
    # a few layers at a time: the float64 upcast inside the sum stays small (3x faster than one call on
    # the whole stack), and few calls keep the thread synchronisation cheap on a shared CPU
    # one layer at a time, reducing over the rows of a 2-D [n, d] view: the float64 upcast stays cache-sized
    # (a reduction over the middle axis of [L, n, d] with an upcast is about 3x slower)
    return (torch.stack([X[a].sum(dim=0, dtype=torch.float64) for a in range(X.shape[0])]) / n)[:, None, :]


def layer_scales(X: torch.Tensor, name: str, measure: str, *, allow_constant: bool = False) -> torch.Tensor:
    """Power-of-two scale per layer ``[L, 1, 1]`` (float64) of a shape-checked stack ``[L, n, d]``.

    The scale puts the largest column range ``max_j (max_i x_ij - min_i x_ij)`` of a layer in [0.5, 1),
    so every centered entry lies in (-1, 1) and is at least a quarter of the largest in magnitude.
    Also the finiteness and spread checks, on X's own dtype (no float64 copy of X is made): a NaN or inf
    shows in the column minima/maxima; a layer whose rows are identical, or differ only by the rounding
    of X's dtype, is refused (:func:`~homoscope.measures._validate.check_spread`). Float64 stacks with
    subnormal-range spreads must be lifted first (:func:`~homoscope.measures._linalg.lift_tiny`).

    Raises:
        ValueError: a NaN/inf entry (its position named), or a layer without variance above rounding
            (unless ``allow_constant``: such a layer then gets zero terms or rounding-sized ones).
    """
    lo, hi = column_range(X, name)
    if not allow_constant:
        check_spread(lo, hi, X.dtype, name, measure, X.shape[1])
    half = (0.5 * hi - 0.5 * lo).amax(dim=-1)  # half the largest column range (no overflow near float64's max)
    _, e = torch.frexp(torch.where(half > 0, half, torch.full_like(half, 0.5)))
    if bool((e < -1020).any()):  # 2^-(e+1) would overflow: the caller did not lift a subnormal-range stack
        raise ValueError(f"{name}: {measure} needs layers lifted out of the subnormal range first (lift_tiny)")
    return torch.ldexp(torch.ones_like(half), -(e + 1))[:, None, None]


def lifted(X: torch.Tensor, name: str, measure: str) -> torch.Tensor:
    """``X``, or for float64 values in the subnormal range an exact power-of-two copy in the normal range
    (:func:`~homoscope.measures._linalg.lift_tiny`), whose spread is checked first on the values as given
    (after the lift, rows a few subnormal steps apart would look well resolved)."""
    Z = la.lift_tiny(X)
    if Z is not X:
        check_spread(*column_range(X, name), X.dtype, name, measure, X.shape[1])
    return Z


def centering(X: torch.Tensor, name: str, measure: str, *, allow_constant: bool = False) -> Centering:
    """Float64 column means and power-of-two layer scales (:func:`layer_scales`, with its checks)."""
    scale = layer_scales(X, name, measure, allow_constant=allow_constant)
    return Centering(column_means(X), scale)


def centered_rows(
    X: torch.Tensor, c: Centering, rows: slice, dtype: torch.dtype, *, rows_first: bool = False
) -> torch.Tensor:
    """``(X[:, rows] - mu) * scale`` computed in float64, returned in ``dtype``.

    Returns ``[L, m, d]``, or with ``rows_first`` ``[m, L * d]`` (layer ``a`` in columns ``a d .. (a+1) d``:
    the concatenated features of the feature route, written in place without a permuted copy).
    """
    part = X[:, rows]
    L, m, d = part.shape
    out = torch.empty((m, L, d) if rows_first else (L, m, d), dtype=dtype, device=X.device)
    shift = -c.mu * c.scale  # exact: the scales are powers of two
    for a in range(L):
        # x * s - mu * s evaluated in float64 (the common dtype) and rounded once into ``out``
        torch.addcmul(shift[a], part[a], c.scale[a, 0, 0], out=out[:, a] if rows_first else out[a])
    return out.view(m, L * d) if rows_first else out


def even_slices(n: int, size: int) -> list[slice]:
    """Split ``range(n)`` into ``ceil(n / size)`` consecutive slices whose lengths differ by at most 1."""
    m = max(1, -(-n // size))
    base, extra = divmod(n, m)
    out, start = [], 0
    for i in range(m):
        stop = start + base + (1 if i < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out


def _partial_len(N: int) -> tuple[int, int]:
    """Split a length-N reduction into k float32 partial sums of length c (k * c >= N)."""
    k = max(1, -(-N // F32_PARTIAL))
    return k, -(-N // k)


def _accumulate_gram(buf: torch.Tensor, N: int, acc: torch.Tensor, weight: float) -> None:
    """``acc += weight * Z Z^T`` in float64 for ``Z = buf[:, :N]`` (``buf [R, >= k c]``, see :func:`_partial_len`).

    float32: one batched GEMM of k partial products of length c (zero-padded), summed in float64.
    """
    if buf.dtype == torch.float64:
        Z = buf[:, :N]
        acc.addmm_(Z, Z.T, alpha=weight)
        return
    k, c = _partial_len(N)
    if k * c > N:
        buf[:, N : k * c].zero_()
    Zk = buf[:, : k * c].view(buf.shape[0], k, c).transpose(0, 1)
    acc.add_(torch.bmm(Zk, Zk.transpose(1, 2)).sum(dim=0, dtype=torch.float64), alpha=weight)


def _gram_route(Xc: torch.Tensor, Yc: torch.Tensor | None) -> Terms:
    """Gram-route terms; ``Yc=None`` means Y is X (self-similarity: one stack, ``cross[a, a] == sx[a]``)."""
    La, n, _ = Xc.shape
    Lb = 0 if Yc is None else Yc.shape[0]
    R = La + Lb
    blocks = even_slices(n, GRAM_BLOCK)
    size = blocks[0].stop - blocks[0].start
    k, _ = _partial_len(size * size)
    buf = torch.empty(R, size * size + k, dtype=Xc.dtype, device=Xc.device)  # room for the zero padding
    acc = torch.zeros(R, R, dtype=torch.float64, device=Xc.device)
    kx = torch.empty(La, n, dtype=torch.float64, device=Xc.device)
    ky = torch.empty(Lb, n, dtype=torch.float64, device=Xc.device)
    for i, bi in enumerate(blocks):
        for bj in blocks[i:]:
            p, q = bi.stop - bi.start, bj.stop - bj.start
            Z = buf[:, : p * q]
            torch.matmul(Xc[:, bi], Xc[:, bj].transpose(-1, -2), out=Z[:La].view(La, p, q))
            if Yc is not None:
                torch.matmul(Yc[:, bi], Yc[:, bj].transpose(-1, -2), out=Z[La:].view(Lb, p, q))
            if bi == bj:
                kx[:, bi] = Z[:La].view(La, p, q).diagonal(dim1=-2, dim2=-1)
                if Yc is not None:
                    ky[:, bi] = Z[La:].view(Lb, p, q).diagonal(dim1=-2, dim2=-1)
            _accumulate_gram(buf, p * q, acc, 1.0 if bi == bj else 2.0)
    if Yc is None:
        sx = acc.diagonal().clone()
        return Terms(acc, sx, sx, kx, kx)
    return Terms(acc[:La, La:].clone(), acc.diagonal()[:La].clone(), acc.diagonal()[La:].clone(), kx, ky)


def _feature_route(X: torch.Tensor, cx: Centering, Y: torch.Tensor, cy: Centering, dtype: torch.dtype) -> Terms:
    La, n, da = X.shape
    Lb, _, db = Y.shape
    dev = X.device
    group = max(1, min(La, FEATURE_ACC_BYTES // max(da * Lb * db * 8, 1)))
    rows = even_slices(n, FEATURE_ROWS)
    cross = torch.empty(La, Lb, dtype=torch.float64, device=dev)
    gx = torch.zeros(La, da, da, dtype=torch.float64, device=dev)
    gy = torch.zeros(Lb, db, db, dtype=torch.float64, device=dev)
    kx = torch.empty(La, n, dtype=torch.float64, device=dev)
    ky = torch.empty(Lb, n, dtype=torch.float64, device=dev)
    for a0 in range(0, La, group):
        g = min(group, La - a0)
        C = None
        cxg = Centering(cx.mu[a0 : a0 + g], cx.scale[a0 : a0 + g])
        for r in rows:
            xcat = centered_rows(X[a0 : a0 + g], cxg, r, dtype, rows_first=True)  # [m, g da]
            ycat = centered_rows(Y, cy, r, dtype, rows_first=True)  # [m, Lb db]
            if C is None:  # first chunk: the product itself starts the float64 sums
                C = (xcat.T @ ycat).to(torch.float64)
            elif dtype == torch.float64:
                C.addmm_(xcat.T, ycat)
            else:
                C.add_(xcat.T @ ycat)  # float32 product added into the float64 sums (no float64 copy)
            _add_self(gx[a0 : a0 + g], xcat, da)
            kx[a0 : a0 + g, r] = _row_sqnorms(xcat, g, da)
            if a0 == 0:
                _add_self(gy, ycat, db)
                ky[:, r] = _row_sqnorms(ycat, Lb, db)
        C4 = C.view(g, da, Lb, db)
        for i in range(g):
            cross[a0 + i] = torch.linalg.vector_norm(C4[i], dim=(0, 2)).square()
        del C, C4
    sx = torch.linalg.vector_norm(gx, dim=(1, 2)).square()
    sy = torch.linalg.vector_norm(gy, dim=(1, 2)).square()
    return Terms(cross, sx, sy, kx, ky)


def _add_self(acc: torch.Tensor, xcat: torch.Tensor, d: int) -> None:
    """``acc[a] += x_a^T x_a`` for the layer blocks ``x_a = xcat[:, a d : (a+1) d]`` (float64 accumulation).

    Column slices of ``xcat [m, L d]`` go to the GEMM as strided views (no copies).
    """
    for a in range(acc.shape[0]):
        xa = xcat[:, a * d : (a + 1) * d]
        if xcat.dtype == torch.float64:
            acc[a].addmm_(xa.T, xa)
        else:
            acc[a].add_(xa.T @ xa)


def _row_sqnorms(xcat: torch.Tensor, L: int, d: int) -> torch.Tensor:
    """Row squared norms per layer block of ``xcat [m, L d]``: ``[L, m]`` float64."""
    return torch.linalg.vector_norm(xcat.view(-1, L, d), dim=-1, dtype=torch.float64).square().T


def unbiased_hsic(cross, sx, sy, kl, kk, ll, sk, sl, n: int):
    """Unbiased HSIC (times n(n-3)) of centered linear Grams ``K``, ``L`` from their sums: the one formula.

    For centered data (``K 1 = 0``) the U-statistic of Song et al. (2012) reduces to
    ``<K, L> - n/(n-2) k.l + (sum k)(sum l) / ((n-1)(n-2))`` with ``k = diag K``, ``l = diag L``.

    Args:
        cross: ``<K, L>`` ``[..., La, Lb]``; sx, sy: ``<K, K>`` ``[La]``, ``<L, L>`` ``[Lb]``.
        kl: ``k.l`` ``[..., La, Lb]``; kk, ll: ``k.k`` ``[La]``, ``l.l`` ``[Lb]``; sk, sl: ``sum k`` ``[La]``,
            ``sum l`` ``[Lb]``; n: rows.

    Returns ``(cross_u [..., La, Lb], hx [La], hy [Lb])``.
    """
    c1 = n / (n - 2)
    c2 = 1.0 / ((n - 1) * (n - 2))
    cross_u = cross - c1 * kl + c2 * sk[:, None] * sl[None, :]
    hx = sx - c1 * kk + c2 * sk * sk
    hy = sy - c1 * ll + c2 * sl * sl
    return cross_u, hx, hy


def unbiased_from_terms(cross, sx, sy, kx, ky, n: int):
    """:func:`unbiased_hsic` from the Grams' diagonals ``kx [La, n]``, ``ky [Lb, n]``."""
    return unbiased_hsic(cross, sx, sy, kx @ ky.T, (kx * kx).sum(-1), (ky * ky).sum(-1), kx.sum(-1), ky.sum(-1), n)


def unbiased_amplification(t: Terms) -> float:
    """How much the unbiased estimator's subtractions magnify a relative error of the terms.

    The largest ratio, over layer pairs and self terms, of the summed magnitudes of the three parts of
    :func:`unbiased_from_terms` to the normalising ``sqrt(hx hy)`` (inf for a non-positive self HSIC).
    With float32 terms (relative error ~1e-8..1e-7) the CKA error is about this times that error.
    """
    n = t.kx.shape[1]
    c1, c2 = n / (n - 2), 1.0 / ((n - 1) * (n - 2))
    skx, sky = t.kx.sum(-1), t.ky.sum(-1)
    _, hx, hy = unbiased_from_terms(t.cross, t.sx, t.sy, t.kx, t.ky, n)
    if not (bool((hx > 0).all()) and bool((hy > 0).all())):
        return math.inf
    mag = t.cross.abs() + c1 * (t.kx @ t.ky.T).abs() + c2 * (skx[:, None] * sky[None, :]).abs()
    ax = (t.sx + c1 * (t.kx * t.kx).sum(-1) + c2 * skx * skx) / hx
    ay = (t.sy + c1 * (t.ky * t.ky).sum(-1) + c2 * sky * sky) / hy
    return max(float((mag / torch.sqrt(hx[:, None] * hy[None, :])).max()), float(ax.max()), float(ay.max()))


def terms(
    X: torch.Tensor,
    cx: Centering,
    Y: torch.Tensor,
    cy: Centering,
    precision: str,
    route: str = "auto",
    *,
    unbiased: bool = False,
) -> Terms:
    """HSIC terms of ``X``, ``Y`` centered and scaled by ``cx``, ``cy`` (see :func:`linear_terms`).

    With ``unbiased`` and float32 GEMMs, terms whose :func:`unbiased_amplification` exceeds
    :data:`MAX_AMPLIFICATION` (e.g. one row with massive activations: its huge diagonal Gram entries
    nearly cancel) are recomputed with float64 GEMMs.
    """
    dtype = gemm_dtype(precision, X.shape[1], X.shape[2], Y.shape[2])
    t = _terms_in(X, cx, Y, cy, dtype, route)
    if unbiased and dtype == torch.float32 and unbiased_amplification(t) > MAX_AMPLIFICATION:
        return _terms_in(X, cx, Y, cy, torch.float64, route)
    return t


def _terms_in(X, cx, Y, cy, dtype, route) -> Terms:
    La, n, da = X.shape
    Lb, _, db = Y.shape
    if choose_route(n, La, da, Lb, db, route) == "feature":
        t = _feature_route(X, cx, Y, cy, dtype)
        if _same(X, Y):  # self-similarity: use the very same numbers on both sides of each ratio
            sx = t.cross.diagonal().clone()
            t = Terms(t.cross, sx, sx, t.kx, t.kx)
        return t
    everything = slice(0, n)
    Xc = centered_rows(X, cx, everything, dtype)
    return _gram_route(Xc, None if _same(X, Y) else centered_rows(Y, cy, everything, dtype))


def _same(X: torch.Tensor, Y: torch.Tensor) -> bool:
    """True when X and Y are views of the same values (same storage, offset, shape, strides, dtype)."""
    return (
        X.dtype == Y.dtype
        and X.device == Y.device
        and X.shape == Y.shape
        and X.stride() == Y.stride()
        and X.data_ptr() == Y.data_ptr()
    )


def linear_terms(
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    route: str = "auto",
    precision: str = "float32",
    measure: str = "linear_cka",
    allow_constant: bool = False,
    unbiased: bool = False,
) -> Terms:
    """HSIC terms of linear kernels for all layer pairs of two shape-checked stacks (any real dtype).

    Args:
        X: ``[La, n, da]`` tensor (not centered; any real floating dtype); finiteness is checked here.
        Y: ``[Lb, n, db]`` tensor on X's device.
        route: ``'auto'``, ``'gram'`` or ``'feature'``.
        precision: ``'float32'`` (float32 GEMMs on float64-centered data, float64 accumulation) or
            ``'float64'``.
        measure: name used in error messages.
        allow_constant: give a constant layer zero terms instead of raising.
        unbiased: the terms feed the unbiased estimator (see :func:`terms`: float64 where float32 would
            lose the 1e-6 bound).

    Returns:
        :class:`Terms` ``(cross [La, Lb], sx [La], sy [Lb], kx [La, n], ky [Lb, n])``, float64, each
        layer of X in units of its power of two ``s_a`` (``cross`` scales by ``s_a^2 t_b^2``, ``sx`` by
        ``s_a^4``, ``kx`` by ``s_a^2``); every CKA ratio cancels these units.

    Raises:
        ValueError: non-finite entries, a constant layer, a bad route or precision.
    """
    check_precision(precision)
    choose_route(1, 1, 1, 1, 1, route)  # validates route before any work
    if allow_constant:
        X, Y = la.lift_tiny(X), la.lift_tiny(Y)
    else:  # subnormal-range values: an exact copy, checked as given
        X, Y = lifted(X, "X", measure), lifted(Y, "Y", measure)
    cx = centering(X, "X", measure, allow_constant=allow_constant)
    cy = centering(Y, "Y", measure, allow_constant=allow_constant)
    return terms(X, cx, Y, cy, precision, route, unbiased=unbiased)
