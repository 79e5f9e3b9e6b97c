"""Closed-form permutation nulls of linear and debiased CKA at any n, from per-layer sums that stream.

Shuffling the rows of Y permutes its Gram matrix, and the first three moments of the statistic
``t = <K, P L P^T>`` over all permutations ``P`` have closed forms in a handful of per-layer statistics of
``K`` and of ``L`` separately (Kazi-Aoual, Hitier, Sabatier & Lebreton 1995, "Refined approximations to
permutation tests for multivariate inference", CSDA 20:643-656; Josse, Pages & Husson 2008, "Testing the
significance of the RV coefficient", CSDA 53:82-91, as implemented by FactoMineR's ``coeffRV``). The p-value
is the upper tail of the Pearson type III distribution with the null's mean, standard deviation and
skewness (Josse et al. 2008); no permutation is drawn, so it costs the same at n = 10^3 and n = 10^7.

Statistics (per layer; ``Xc`` the column-centered layer ``[n, d]``, ``K = Xc Xc^T``, ``k = diag K``,
``C = Xc^T Xc``; letters as in Josse et al.) and how each is computed without an ``[n, n]`` matrix:

======  ===============================  ==================================================================
field   definition                       computed from
======  ===============================  ==================================================================
``t1``  ``tr K``                         ``tr C``: one pass (shifted sums, exactly re-centered)
``t2``  ``tr K^2``                       ``||C||_F^2``: one pass
``t3``  ``tr K^3``                       ``tr C^3``: one pass
``s2``  ``sum_i k_i^2``                  ``sum ||u||^4``, ``sum ||u||^2 u``, ``sum u u^T`` of shifted rows: one pass
``b``   ``k^T K k``                      ``||sum_i k_i xc_i||^2``, the same sums: one pass
``s3``  ``sum_i k_i^3``                  second pass over the rows (needs the column means)
``r``   ``sum_i k_i (K^2)_ii``           second pass: ``(K^2)_ii = xc_i^T C xc_i`` (needs the means and C)
``u``   ``sum_ij K_ij^3``                second pass: exact through the third-moment tensor
                                         ``M = sum_i xc_i^(x3)`` (``u = ||M||_F^2``, ``L d^3`` floats) when it
                                         fits ``max_tensor_bytes``, or over all rows when
                                         ``n <= sample_rows``; otherwise estimated on a seeded subsample
======  ===============================  ==================================================================

The mean and the variance need ``t1``, ``t2`` and ``s2`` only: they are exact at any n after one pass. The
skewness needs all eight. ``u`` is the only term that needs either ``d^3`` memory or ``n^2`` work; when
neither fits, it is ``s3 + n(n-1)/(m(m-1)) sum_{i != j in S} K_ij^3`` over a subsample ``S`` of
``m = sample_rows`` rows (unbiased for the off-diagonal part; ``LayerMoments.u_rows`` records ``m``).
``S`` is the ``m`` rows whose global row index has the smallest seeded hash (splitmix64), so it does not
depend on chunking or merge order, and :func:`layer_moments` selects the same rows in memory.

Debiased CKA (unbiased HSIC; Song et al. 2012, U-centering of Szekely & Rizzo 2014, "Partial distance
correlation with methods for dissimilarities", Ann. Statist. 42:2382-2412): a U-centered matrix has a
zero diagonal and zero row sums, so by Mantel's permutation moments the null mean is exactly 0 and the
variance is exactly ``2 / (n (n - 3))`` for any data (the Hilbert-space dimension ``n(n-3)/2`` of Szekely &
Rizzo 2013, "The distance correlation t-test of independence in high dimension", JMVA 117:193-213). The
third moment follows from the same Kazi-Aoual formula applied to the U-centered Grams, whose three
non-zero statistics are expressed exactly through the eight above.

Precision. The streaming passes run ``precision="float32"`` by default: every sum that is linear in the
rows (column sums, squared norms, their sums and powers, ``diag C``) is float64; only the ``O(d^2)``-per-row
products run as float32 GEMMs: ``sum u u^T`` in the first pass, ``sum_i k_i xc_i xc_i^T`` (for ``r``) in the
second, the subsample's Gram for ``u`` and ``C C`` for ``t3``. They take rows shifted or centered in float32
arithmetic (one rounding of the centered value), scaled by a power of two per layer where the range needs
it, form only the upper column-block triangle of each symmetric product, and add partials of
:data:`F32_PARTIAL` rows into float64. Where float32 would lose the bounds below, float64 takes over: a
block whose mean is far from the shift is centered in float64 first; massive rows (norm over 8x the block's
typical one) are computed from the input in float64 and added in float64, and with them ``tr C^3`` (their
terms nearly cancel in the U-centered statistics, so every float64 term of such a row must agree with its
products); float64 input rows, values outside float32's comfortable range, narrow layers
(``d < F32_MIN_WIDTH``) and TF32 GEMMs on CUDA use float64 arithmetic. Against float64 the null mean and
standard deviation stay within about 1e-7 relative (bound 1e-6), the skewness within about 1e-5 relative
and the p-value within about 1e-7 absolute, also with a large common offset, massive rows and bf16-quantized
features. ``precision="float64"`` is the exact float64 path (about 1e-13).

Example (two passes over shards; each pass can be split across workers and merged)::

    first = MomentSums()
    for chunk in shards:                   # [L, m, d]
        first.update(chunk)
    second = first.second_pass(seed=0)     # frozen means and C; one per worker, merged afterwards
    for start, chunk in shards_with_offsets:
        second.update(chunk, start=start)
    mx = second.compute()                  # LayerMoments of X (first.compute(): mean and std only)
    null = linear_cka_null(mx, my, observed)   # observed linear CKA [La, Lb]
    null.mean, null.std, null.skewness, null.p_value
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch

from ._hsic import F32_PARTIAL, check_precision
from ._validate import (
    ZERO_VARIANCE_RTOL,
    as_stack,
    as_tensor,
    check_variance,
    column_range,
    raise_non_finite,
    stack_shape,
)

F64 = torch.float64
F32 = torch.float32
MIN_N = 6  # the third permutation moment divides by n(n-1)(n-2)(n-3)(n-4)(n-5)
SAMPLE_ROWS = 2048
MAX_TENSOR_BYTES = 2**28
BLOCK_ROWS = 1024
BLOCK_ROWS32 = 4096  # second pass with precision="float32": rows per block (scratch O(L BLOCK_ROWS32 d) float32)
# |skewness| below which the Pearson type III tail is replaced by the normal one: they differ by < 1e-5
# there, and the gamma tail loses accuracy to the size of its shape parameter 4 / skewness^2 below it
NORMAL_SKEW = 1e-4
# relative null standard deviation below which the permutation distribution counts as a point mass
POINT_MASS_RTOL = 1e-12
# precision="float32": layers narrower than this run float64 GEMMs (they cost little there)
F32_MIN_WIDTH = 64
# precision="float32": a row whose squared norm exceeds MASSIVE times the block's mean over the other rows
# (norm over 8x the typical one: a massive activation) is taken from the input in float64 and added in
# float64; a block with more than MASSIVE_SHARE of such rows runs float64 altogether
MASSIVE = 64.0
MASSIVE_SHARE = 1 / 16
# precision="float32": a block whose rows' mean is off the shift by more than RESHIFT (squared offset over
# the per-row variance) is centered in float64 first; rows whose norm leaves [1 / F32_RANGE, F32_RANGE] are
# scaled by a power of two in float64 first (float32 products of such values would leave the normal range)
RESHIFT = 1 / 16
F32_RANGE = 2.0**40
# precision="float32": a symmetric product Z^T Z is formed as its upper triangle of TRI_SPLITS x TRI_SPLITS
# column blocks (TRI_SPLITS (TRI_SPLITS + 1) / 2 of the TRI_SPLITS^2 block products: 62% of the GEMM for 4),
# blocks of at least TRI_MIN_COLS columns; the Gram of the rows kept for u goes in CUBE_BLOCK-row blocks
TRI_SPLITS = 4
TRI_MIN_COLS = 128
CUBE_BLOCK = 256
# precision="float32": float32 values upcast at a time for the exact float64 column sums (cache-sized, 4 MiB)
SUM_ELEMS = 2**19


@dataclass(frozen=True)
class LayerMoments:
    """Per-layer statistics of one stack's centered Gram matrices (each tensor ``[L]`` float64).

    Attributes:
        n: rows.
        t1, t2, t3: ``tr K``, ``tr K^2``, ``tr K^3``.
        s2, b: ``sum_i k_i^2`` and ``k^T K k`` (``k = diag K``).
        s3, r, u: ``sum_i k_i^3``, ``sum_i k_i (K^2)_ii``, ``sum_ij K_ij^3``; None after one pass
            (then only the null mean and standard deviation are available).
        u_rows: rows ``u`` was computed from: ``n`` when exact, the subsample size otherwise; None with ``u``.
    """

    n: int
    t1: torch.Tensor
    t2: torch.Tensor
    t3: torch.Tensor
    s2: torch.Tensor
    b: torch.Tensor
    s3: torch.Tensor | None = None
    r: torch.Tensor | None = None
    u: torch.Tensor | None = None
    u_rows: int | None = None

    @property
    def has_third(self) -> bool:
        """Whether the third-order statistics (skewness) are present."""
        return self.u is not None


@dataclass(frozen=True)
class AnalyticNull:
    """Closed-form permutation null per layer pair (tensors ``[La, Lb]`` float64).

    Attributes:
        observed: the measure as given.
        mean, std, skewness: moments of the measure over all row permutations of Y.
        p_value: one-sided upper tail ``P(null >= observed)`` under ``approximation``.
        approximation: ``'pearson3'``, ``'normal'`` (no third-order statistics) or ``'t'`` (Szekely-Rizzo).
        n: rows.
        u_rows: None when every statistic is exact; else the subsample size behind the skewness.
    """

    observed: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    skewness: torch.Tensor
    p_value: torch.Tensor
    approximation: str
    n: int
    u_rows: int | None


# ---------------------------------------------------------------------------------------------- checks
def _check_n(n: int, name: str) -> None:
    if n < MIN_N:
        raise ValueError(
            f"{name} has n={n} rows; the closed-form permutation null needs n >= {MIN_N} "
            "(its third moment divides by n(n-1)...(n-5))"
        )


def _check_int(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {name}={value!r}")
    return int(value)


def _check_finite_stats(stats: dict, name: str) -> None:
    for key, t in stats.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            layer = int((~torch.isfinite(t)).nonzero()[0, 0])
            raise ValueError(
                f"{name} layer {layer}: statistic {key} overflows float64 (entries too large); divide the "
                "layer by a constant first (the null is scale-free)"
            )


def _check_constant(t1: torch.Tensor, raw: torch.Tensor, name: str) -> None:
    bad = (t1 <= ZERO_VARIANCE_RTOL**2 * raw).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"{name} layer {bad[0]} has zero variance after centering (all rows identical); "
            "the permutation null of CKA is undefined for a constant layer"
        )


# ---------------------------------------------------------------------------------------------- statistics
def _second_order(Xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``k [L, n]``, ``C [L, d, d]`` and the one-pass statistics of centered ``Xc [L, n, d]``."""
    k = (Xc * Xc).sum(-1)
    C = Xc.mT @ Xc
    return k, C, _from_gram_terms(C, (k * k).sum(1), torch.einsum("ln,lnd->ld", k, Xc))


def _from_gram_terms(C: torch.Tensor, s2: torch.Tensor, v: torch.Tensor, f32: bool = False) -> dict:
    """``t1, t2, t3, s2, b`` from ``C [L, d, d]``, ``s2 [L]`` and ``v = sum_i k_i xc_i [L, d]`` (``f32``: ``t3``
    from float32 GEMMs, :func:`_trace_cube32`)."""
    L = C.shape[0]
    return dict(
        t1=C.diagonal(dim1=-2, dim2=-1).sum(-1),
        t2=torch.bmm(C.reshape(L, 1, -1), C.reshape(L, -1, 1))[:, 0, 0] if f32 else (C * C).sum((-2, -1)),
        t3=_trace_cube32(C) if f32 else ((C @ C) * C).sum((-2, -1)),
        s2=s2,
        b=(v * v).sum(-1),
    )


def _row_keys(start: int, m: int, seed: int) -> np.ndarray:
    """Seeded splitmix64 hashes of the global row indices ``start .. start+m-1`` (uint64, distinct)."""
    with np.errstate(over="ignore"):
        z = np.arange(start, start + m, dtype=np.uint64) + np.uint64((int(seed) * 0x9E3779B97F4A7C15 + 1) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _cube_route(L: int, n: int, d: int, sample_rows: int, max_tensor_bytes: int) -> str:
    """How ``u`` is computed: ``'tensor'`` (exact), ``'rows'`` (all rows, exact) or ``'sample'``."""
    if L * d**3 * 8 <= max_tensor_bytes:
        return "tensor"
    return "rows" if n <= sample_rows else "sample"


def _gram_cubes(Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_ij K_ij^3`` and ``sum_i K_ii^3`` ``[L]`` of rows ``Z [L, m, d]`` in blocks (no ``[m, m]`` matrix)."""
    m = Z.shape[1]
    full = torch.zeros(Z.shape[0], dtype=F64, device=Z.device)
    for i in range(0, m, BLOCK_ROWS):
        for j in range(i, m, BLOCK_ROWS):
            G = Z[:, i : i + BLOCK_ROWS] @ Z[:, j : j + BLOCK_ROWS].mT
            full += (G * G * G).sum((-2, -1)) * (1.0 if i == j else 2.0)
    kz = (Z * Z).sum(-1)
    return full, (kz * kz * kz).sum(-1)


def _tensor_add_(M: torch.Tensor, Z: torch.Tensor) -> None:
    """``M [L, d*d, d] += sum_i z_i (x) z_i (x) z_i`` for rows ``Z [L, b, d]``, in row blocks."""
    L, b, d = Z.shape
    step = max(1, (1 << 22) // max(L * d * d, 1))
    for i in range(0, b, step):
        z = Z[:, i : i + step]
        kr = (z[:, :, :, None] * z[:, :, None, :]).reshape(L, z.shape[1], d * d)
        M.baddbmm_(kr.mT, z)


def _sampled_cube(Z: torch.Tensor, s3: torch.Tensor, n: int) -> torch.Tensor:
    """Estimate ``u`` from ``s3`` (exact) and the off-diagonal cubes of subsample rows ``Z [L, m, d]``."""
    m = Z.shape[1]
    full, diag = _gram_cubes(Z)
    return s3 + (full - diag) * (n * (n - 1.0) / (m * (m - 1.0)))


# ---------------------------------------------------------------------------------------------- float32 GEMMs
class _Block(NamedTuple):
    """A block of ``b`` rows prepared for the first pass's float32 route (:func:`_first_fast`, :func:`_first_exact`).

    ``z [L, R, d]`` float32: the shifted rows (times ``2^-e`` per layer where ``inv`` is set), massive and
    padding rows 0, ``R`` a multiple of :data:`F32_PARTIAL` (None: every row goes through ``rows``);
    ``inv [L, 1, 1]`` float64 undoes the scale in products (None: no scale); ``rows [L, q, d]`` float64 and
    ``weights [L, q]``: rows whose weighted outer products are added in float64 (or None); ``a [L, b]``,
    ``su``, ``sau``, ``sq [L, d]`` float64: squared norms, sum, norm-weighted sum and column sums of squares
    of the shifted rows; ``massive``: whether the block had massive rows.
    """

    z: torch.Tensor | None
    inv: torch.Tensor | None
    rows: torch.Tensor | None
    weights: torch.Tensor | None
    a: torch.Tensor
    su: torch.Tensor
    sau: torch.Tensor
    sq: torch.Tensor
    massive: bool


def _use_f32(precision: str, d: int, device: torch.device) -> bool:
    """Whether the float32 route runs: ``precision='float32'``, ``d >= F32_MIN_WIDTH`` and no TF32 GEMMs."""
    tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    return precision == "float32" and d >= F32_MIN_WIDTH and not tf32


def _splits(d: int) -> list[tuple[int, int]]:
    """Column blocks ``(a, b)`` (1 to :data:`TRI_SPLITS`) of the upper-block-triangle products."""
    p = max(1, min(TRI_SPLITS, d // TRI_MIN_COLS))
    edges = [d * i // p for i in range(p + 1)]
    return list(zip(edges, edges[1:]))


def _buffer(store: dict, key: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A contiguous ``shape`` tensor over scratch memory kept in ``store`` under ``key`` (grown when too small).

    A fresh large tensor per block costs a page fault on every first touch of its memory; this does not.
    """
    numel = math.prod(shape)
    t = store.get(key)
    if t is None or t.numel() < numel or t.dtype != dtype or t.device != device:
        t = store[key] = torch.empty(numel, dtype=dtype, device=device)
    return t[:numel].view(shape)


def _padded(b: int) -> int:
    return -(-b // F32_PARTIAL) * F32_PARTIAL


def _pow2_below(top: torch.Tensor) -> torch.Tensor:
    """Powers of two ``s`` ``[L]`` (float64) with ``top * s`` in [0.5, 1) (1 where ``top`` is 0)."""
    _, e = torch.frexp(torch.where(top > 0, top, torch.ones_like(top)))
    return torch.ldexp(torch.ones_like(top), -e)


def _in_range(top: torch.Tensor) -> bool:
    """Whether layers whose largest row norm is ``top [L]`` keep float32 products in the normal range unscaled."""
    return bool(((top <= F32_RANGE) & ((top >= 1.0 / F32_RANGE) | (top == 0))).all())


def _sqnorms(Z: torch.Tensor) -> torch.Tensor:
    """Row squared norms ``[L, m]`` float64 of ``Z [L, m, d]`` in Z's dtype (float32: relative error ~3e-7,
    unbiased; :func:`_exact_massive` makes the massive rows' exact)."""
    return torch.linalg.vector_norm(Z, dim=-1).to(F64).square_()


def _exact_massive(w: torch.Tensor, Z: torch.Tensor, big: torch.Tensor, q: int,
                   shift: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The massive rows flagged in ``big [L, m]`` of ``Z [L, m, d]`` minus ``shift [L, d]`` (if given), as
    ``R [L, q, d]`` float64 (zero-padded), their exact float64 squared norms ``wR [L, q]``, and ``w [L, m]`` with
    those norms put in place. Every float64 term of a massive row must agree with its products to float64
    precision (they nearly cancel in the U-centered statistics), so its shifted values come from the input
    rows ``Z`` in float64, not from float32 arithmetic."""
    order = torch.argsort(big.to(torch.uint8), dim=1, descending=True, stable=True)[:, :q]
    keep = torch.gather(big, 1, order)
    R = torch.gather(Z, 1, order[..., None].expand(-1, -1, Z.shape[2])).to(F64)
    if shift is not None:
        R -= shift[:, None, :]
    R *= keep[..., None]
    wR = torch.linalg.vector_norm(R, dim=-1).square_()
    return R, wR, w.masked_scatter(big, wR[keep])


def _massive(w: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """Rows ``[L, m]`` (bool) whose squared norm in ``w [L, m]`` exceeds :data:`MASSIVE` times the layer's mean
    over the other rows (None if there is none), and the largest count of such rows in a layer.

    The mean leaves out the rows over MASSIVE times the plain mean first, so a few massive rows do not
    raise the bar for each other (a median costs a sort).
    """
    mean = w.mean(1, keepdim=True)
    big = w > MASSIVE * mean
    if bool(big.any()):
        rest = (~big).sum(1, keepdim=True).clamp(min=1)
        big = w > MASSIVE * (w.masked_fill(big, 0.0).sum(1, keepdim=True) / rest)
    q = int(big.sum(1).max())
    return (big if q else None), q


def _rough_means(xs: torch.Tensor) -> torch.Tensor:
    """Column means ``[L, d]`` float64 of the first rows (up to :data:`F32_PARTIAL`) of ``xs [L, m, d]`` other than
    massive ones (float32 GEMVs unless ``xs`` is float64): a shift for the float32 route's sums, which only
    needs to be near the mean of the ordinary rows."""
    x = xs[:, :F32_PARTIAL]
    x = x if x.dtype == F64 else x.to(F32)
    keep = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    mean = _gemv(keep / x.shape[1], x)
    big, _ = _massive(_sqnorms(x - mean.to(x.dtype)[:, None, :]))
    if big is not None:
        keep = keep.masked_fill(big, 0.0)
        mean = _gemv(keep / keep.sum(1, keepdim=True), x)
    return mean


def _check_chunk_finite(xs: torch.Tensor, name: str) -> None:
    """Raise :func:`raise_non_finite`'s ValueError if ``xs`` holds a NaN/inf (one reduction: a non-finite sum is
    a NaN/inf or an overflow, and only the first is an error), before any of it is accumulated."""
    if not bool(torch.isfinite(xs.sum())):
        raise_non_finite(xs, name)


def _gemv(w: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i z_i`` ``[L, d]`` float64 for ``w [L, m]`` and rows ``Z [L, m, d]`` (a GEMV in Z's dtype)."""
    return torch.bmm(w.to(Z.dtype)[:, None, :], Z)[:, 0].to(F64)


def _row_sums64(z: torch.Tensor, w: torch.Tensor, store: dict) -> tuple[torch.Tensor, ...]:
    """``sum_i z_i``, ``sum_i w_i z_i`` and ``sum_i z_i^2`` (per column) ``[L, d]`` in float64 for float32 rows
    ``z [L, b, d]`` and weights ``w [L, b]`` (float64): the rows are upcast :data:`SUM_ELEMS` values at a time
    (cache-sized) and summed in float64. A float32 GEMV drifts by ~1e-5 relative over thousands of rows with
    a common offset, and float32 products of repeated values (quantized features) by ~1e-6; the means must be
    exact (massive rows' squared norms in the second pass depend on them), and so must ``diag C``, which
    carries most of ``tr C^2`` for such features."""
    L, b, d = z.shape
    weights = torch.stack([torch.ones_like(w), w], 1)  # [L, 2, b]
    if z.device.type != "cpu":  # one upcast: no cache to fit, and few kernels
        t = z.to(F64)
        return *torch.bmm(weights, t).unbind(1), t.square_().sum(1)
    sums = torch.zeros(L, 3, d, dtype=F64, device=z.device)
    rows = max(1, SUM_ELEMS // d)
    tmp = _buffer(store, "rows64", (min(rows, b), d), F64, z.device)
    for i in range(0, b, rows):
        t = tmp[: min(rows, b - i)]
        for a in range(L):
            t.copy_(z[a, i : i + rows])
            sums[a, :2] += weights[a, :, i : i + rows] @ t
            sums[a, 2] += t.square_().sum(0)
    return sums[:, 0], sums[:, 1], sums[:, 2]


def _first_fast(x: torch.Tensor, c32: torch.Tensor, store: dict) -> _Block | None:
    """Prepare rows ``x [L, b, d]`` (float32/16/bf16) of the first pass in float32 arithmetic, or None.

    ``z = x - c32`` is formed in float32 (one rounding of the shifted value, as a float64 shift and a cast
    would give) and the sums of ``z`` are float64 (:func:`_row_sums64`); squared norms are float32 norms
    (relative error ~3e-7, unbiased). Massive rows are taken out of ``z`` and computed from ``x`` in float64.
    None (then :func:`_first_exact`) when a value is not finite, too many rows are massive, rows leave
    float32's comfortable range, or the mean of the other rows is far from the shift
    (``||mean||^2 > RESHIFT * spread``: float32 error grows with the offset).
    """
    L, b, d = x.shape
    z = _buffer(store, "z", (L, _padded(b), d), F32, x.device)
    zb = z[:, :b]
    if x.dtype == F32:
        torch.sub(x, c32[:, None, :], out=zb)
    else:
        zb.copy_(x).sub_(c32[:, None, :])
    a = _sqnorms(zb)
    big, q = _massive(a)
    normal = a if big is None else a.masked_fill(big, 0.0)
    if not bool(torch.isfinite(a).all()) or q > MASSIVE_SHARE * b or not _in_range(normal.amax(1).sqrt()):
        return None
    if big is not None:
        zb.masked_fill_(big[..., None], 0.0)
    su, sau, sq = _row_sums64(zb, normal, store)
    nb = torch.full_like(a[:, 0], float(b)) if big is None else (~big).sum(1).to(F64)
    mu2 = (su * su).sum(-1) / (nb * nb)
    if bool((mu2 > RESHIFT * (normal.sum(1) / nb - mu2)).any()):
        return None
    rows = weights = None
    if big is not None:
        rows, ab, a = _exact_massive(a, x, big, q, shift=c32.to(F64))
        weights = torch.ones_like(ab)
        su += rows.sum(1)
        sau += (ab[..., None] * rows).sum(1)
        sq += (rows * rows).sum(1)
    z[:, b:].zero_()
    return _Block(z, None, rows, weights, a, su, sau, sq, big is not None)


def _first_exact(x: torch.Tensor, c: torch.Tensor, store: dict, name: str) -> _Block:
    """Prepare rows ``x [L, b, d]`` (any dtype) of the first pass in float64 arithmetic.

    ``u = x - c`` in float64. Massive rows go to ``rows`` (all rows, and ``z`` None, when more than
    :data:`MASSIVE_SHARE` are). If the mean ``mu`` of the other rows is far from the shift, they are centered
    first, in float64, and their mean enters through ``rows`` exactly (``nb mu mu^T + sv mu^T + mu sv^T =
    p p^T - q q^T``, ``sv`` the float64 sum of the centered rows), so no offset reaches float32.
    Out-of-range layers are scaled by a power of two.

    Raises:
        ValueError: a NaN/inf in ``x`` (named as ``name``).
    """
    L, b, d = x.shape
    u = _buffer(store, "u", (L, b, d), F64, x.device)
    u.copy_(x).sub_(c[:, None, :])
    a = _sqnorms(u)
    if not bool(torch.isfinite(a).all()):
        raise_non_finite(x, name)
    ones = torch.ones_like(a)
    su, sau, sq = _gemv(ones, u), _gemv(a, u), torch.linalg.vector_norm(u, dim=1).square_()
    big, q = _massive(a)
    if q > MASSIVE_SHARE * b:
        return _Block(None, None, u, ones, a, su, sau, sq, True)
    keep = ones if big is None else (~big).to(F64)
    rows, weights = ([], []) if big is None else ([_exact_massive(a, u, big, q)[0]], [ones[:, :q]])
    nb = keep.sum(1, keepdim=True)
    mu = _gemv(keep, u) / nb
    mu2 = (mu * mu).sum(-1)
    w = a * keep
    if bool((mu2 > RESHIFT * (w.sum(1) / nb[:, 0] - mu2)).any()):
        u.sub_(mu[:, None, :])
        sv = _gemv(keep, u) / nb.sqrt()
        rows += [(mu * nb.sqrt() + sv)[:, None], sv[:, None]]
        weights += [ones[:, :1], -ones[:, :1]]
        w = _sqnorms(u) * keep
    inv, top = None, w.amax(1).sqrt()
    if not _in_range(top):
        s = _pow2_below(top)
        u.mul_(s[:, None, None])
        inv = (1.0 / (s * s))[:, None, None]
    z = _buffer(store, "z", (L, _padded(b), d), F32, x.device)
    z[:, :b].copy_(u)
    z[:, b:].zero_()
    if big is not None:
        z[:, :b].masked_fill_(big[..., None], 0.0)
    R = torch.cat(rows, 1) if rows else None
    return _Block(z, inv, R, torch.cat(weights, 1) if rows else None, a, su, sau, sq, big is not None)


def _upper_products(z: torch.Tensor, splits: list):
    """Upper column blocks of ``z^T z`` for float32 rows ``z [L, R, d]`` (contiguous, R a multiple of
    :data:`F32_PARTIAL`): one batched float32 GEMM per column block over the partials of F32_PARTIAL rows,
    the (few) partials then added in float32. Yields ``P = (z^T z)[:, a:b, a:]`` ``[L, b-a, d-a]`` float32 per
    block ``(a, b)`` of ``splits``."""
    L, R, d = z.shape
    k = R // F32_PARTIAL
    zk = z.view(L * k, F32_PARTIAL, d)
    for a, b in splits:
        Pk = torch.bmm(zk[:, :, a:b].mT, zk[:, :, a:]).view(L, k, b - a, d - a)
        yield Pk.sum(1) if k > 1 else Pk[:, 0]


def _upper_add_(U: list, blk: _Block, store: dict, splits: list) -> None:
    """``U_i += (Z^T Z)[:, a:b, a:]`` for the upper column blocks ``U_i`` (float64) of a prepared block: the
    float32 products of ``blk.z`` and the float64 weighted products of ``blk.rows``."""
    if blk.z is not None:
        for Ui, P in zip(U, _upper_products(blk.z, splits)):
            P64 = _buffer(store, "p", tuple(P.shape), F64, P.device).copy_(P)
            Ui.add_(P64) if blk.inv is None else Ui.addcmul_(P64, blk.inv)
    if blk.rows is not None:
        Rw = blk.rows * blk.weights[..., None]
        for (a, b), Ui in zip(splits, U):
            Ui.baddbmm_(Rw[:, :, a:b].mT, blk.rows[:, :, a:])


def _fold_upper_(S: torch.Tensor, U: list, splits: list) -> None:
    """``S += M`` (``S [L, d, d]`` float64) for the upper column blocks ``U_i = M[:, a:b, a:]`` of a symmetric
    ``M``, then zero ``U``."""
    d = S.shape[-1]
    for (a, b), Ui in zip(splits, U):
        S[:, a:b, a:] += Ui
        if b < d:
            S[:, b:, a:b] += Ui[:, :, b - a :].mT
        Ui.zero_()


def _weighted_upper(C: torch.Tensor, splits: list) -> list:
    """``[c, W_1, W_2, ...]``: ``W_i`` the upper column block ``c C[:, a:b, a:]`` in float32 with its entries right
    of the diagonal block doubled, so ``sum_i <W_i, P_i> = c <C, M>`` for the upper blocks ``P_i`` of a
    symmetric ``M``; ``c [L]`` a power of two per layer that keeps ``C`` in float32's range."""
    c = _pow2_below(torch.maximum(C.amax((-2, -1)), -C.amin((-2, -1))))
    out = [c]
    for a, b in splits:
        W = C[:, a:b, a:] * c[:, None, None]
        W[:, :, b - a :] *= 2.0
        out.append(W.to(F32))
    return out


def _second_fast(x: torch.Tensor, mean32: torch.Tensor, delta32: torch.Tensor, store: dict):
    """Centered rows of ``x [L, b, d]`` (float32/16/bf16) in float32 arithmetic, or None.

    ``xc = (x - mean32) - delta32`` with ``mean32 + delta32`` the float64 column means to ~1e-13 (two float32
    roundings of the centered value). Returns ``(xc, k)``: ``xc [L, b, d]`` float32, a view of the scratch
    rows of :func:`_r_add32` (padding rows 0), and ``k = ||xc||^2`` float64; None (then float64) when a value
    is not finite or out of float32's comfortable range.
    """
    L, b, d = x.shape
    z = _buffer(store, "z", (L, _padded(b), d), F32, x.device)
    zb = z[:, :b]
    if x.dtype == F32:
        torch.sub(x, mean32[:, None, :], out=zb)
    else:
        zb.copy_(x).sub_(mean32[:, None, :])
    if delta32 is not None:
        zb.sub_(delta32[:, None, :])
    k = _sqnorms(zb)
    if not (bool(torch.isfinite(k).all()) and _in_range(k.amax(1).sqrt())):
        return None
    z[:, b:].zero_()
    return zb, k


def _r_add32(xc: torch.Tensor, k: torch.Tensor, massive: tuple | None, C: torch.Tensor, Cw: list, store: dict,
             splits: list) -> torch.Tensor:
    """``sum_i k_i xc_i^T C xc_i`` ``[L]`` float64 of centered rows ``xc [L, b, d]`` (overwritten): float64 rows,
    or float32 rows from :func:`_second_fast`.

    It is ``<C, Z^T Z>`` for ``Z = sqrt(k) xc``: the upper column blocks of ``Z^T Z`` from float32 GEMMs
    (rows scaled by a power of two per layer, :func:`_upper_products`) against ``Cw``
    (:func:`_weighted_upper`), in float64. ``massive``: ``(big [L, b], R [L, q, d], kR [L, q])``, the massive rows
    (exact float64, :func:`_exact_massive`), added in float64 instead.
    """
    L, b, d = xc.shape
    r = torch.zeros(L, dtype=F64, device=k.device)
    if massive is not None:
        big, R, kR = massive
        r += (kR * ((R @ C) * R).sum(-1)).sum(1)
        k = k.masked_fill(big, 0.0)
    s = _pow2_below(k.amax(1))  # |sqrt(k_i) xc_ij| <= k_i
    mult = (k.sqrt() * s[:, None])[..., None]
    z = _buffer(store, "z", (L, _padded(b), d), F32, xc.device)
    if xc.dtype == F32:  # xc is z[:, :b]
        xc.mul_(mult.to(F32))
    else:
        z[:, :b].copy_(xc.mul_(mult))
        z[:, b:].zero_()
    dot = torch.zeros_like(r)
    for P, W in zip(_upper_products(z, splits), Cw[1:]):
        dot += P.mul_(W).sum(-1).to(F64).sum(-1)  # float32 rows of <= d products, then float64
    return r + dot / (s * s * Cw[0])


def _to_f32_scaled(Z: torch.Tensor, top: torch.Tensor, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Z * s)`` in float32 and ``s [L]``: powers of two per layer with ``top * s`` in [0.5, 1) (``top [L]``
    bounds the magnitudes of interest of each layer of ``Z [L, ...]``, float64). ``inplace``: a float32 ``Z``
    may be scaled in place instead of copied."""
    s = _pow2_below(top)
    view = (-1,) + (1,) * (Z.ndim - 1)
    if _in_range(top):  # cast, then scale exactly in float32
        Z32 = Z if inplace and Z.dtype == F32 else Z.to(F32, copy=True)
        return Z32.mul_(s.to(F32).view(view)), s
    return (Z * s.view(view)).to(F32), s


def _off_cubes32(Z: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_{i != j} K_ij^3`` ``[L]`` (float64) of rows ``Z [L, m, d]`` (taken in ``order`` if given) with float32
    Grams: rows scaled by a power of two per layer (every Gram entry below 1), blocks of :data:`CUBE_BLOCK`
    rows on and above the diagonal (diagonal entries left out), cubes summed in float32 along rows of at most
    CUBE_BLOCK and then in float64."""
    m = Z.shape[1]
    top = 1.01 * _sqnorms(Z).amax(1).sqrt()
    if order is not None:  # the reordered copy is the one that gets scaled
        Z = torch.index_select(Z, 1, order)
    Z32, s = _to_f32_scaled(Z, top, inplace=order is not None)
    off = torch.zeros(Z.shape[0], dtype=F64, device=Z.device)
    for i in range(0, m, CUBE_BLOCK):
        for j in range(i, m, CUBE_BLOCK):
            G = Z32[:, i : i + CUBE_BLOCK] @ Z32[:, j : j + CUBE_BLOCK].mT
            if i == j:
                G.diagonal(dim1=-2, dim2=-1).zero_()
            off += G.pow_(3).sum(-1).to(F64).sum(-1) * (1.0 if i == j else 2.0)
    inv3 = (1.0 / s) ** 3
    return off * inv3 * inv3


def _trace_cube32(C: torch.Tensor) -> torch.Tensor:
    """``tr C^3 = <C C, C>`` ``[L]`` for symmetric ``C [L, d, d]`` (float64) with float32 GEMMs.

    ``C`` is scaled by a power of two per layer and cast to float32; only the upper column blocks of the
    symmetric ``C C`` are formed (:func:`_splits`), multiplied by ``C`` and summed in float32 along rows of
    at most d products, then in float64.
    """
    C32, s = _to_f32_scaled(C, torch.maximum(C.amax((-2, -1)), -C.amin((-2, -1))))
    t3 = torch.zeros(C.shape[0], dtype=F64, device=C.device)
    for a, b in _splits(C.shape[-1]):
        P = torch.bmm(C32[:, a:b], C32[:, :, a:]).mul_(C32[:, a:b, a:])
        t3 += (P[:, :, : b - a].sum(-1) + 2.0 * P[:, :, b - a :].sum(-1)).to(F64).sum(-1)
    return t3 / (s * s * s)


def layer_moments(
    X: Any,
    *,
    third: bool = True,
    sample_rows: int = SAMPLE_ROWS,
    max_tensor_bytes: int = MAX_TENSOR_BYTES,
    seed: int = 0,
    name: str = "X",
) -> LayerMoments:
    """Per-layer permutation-null statistics of a stack held in memory (Josse, Pages & Husson 2008).

    Gives the same values as :class:`MomentSums` then :meth:`MomentSums.second_pass` over any chunking
    (``precision='float64'``; the float32 default within its bounds, see the module docstring; same rule
    for ``u``: exact when the ``L d^3`` third-moment tensor fits ``max_tensor_bytes`` or ``n <= sample_rows``,
    else the seeded subsample of ``sample_rows`` rows, rows indexed ``0 .. n-1``). Always float64.
    Memory ``O(L n d + L d^2)``; time ``O(L n d^2)`` plus ``O(L min(n^2 d, n d^3))`` for an exact ``u``.

    Args:
        X: ``[L, n, d]`` or ``[n, d]``, any real dtype (computed in float64), any device.
        third: also compute ``s3``, ``r`` and ``u`` (the skewness); False gives mean and std only.
        sample_rows: subsample size for ``u`` when it cannot be exact (>= 2).
        max_tensor_bytes: memory bound for the exact third-moment tensor (all layers together).
        seed: seed of the row subsample.
        name: the argument name used in error messages.

    Returns:
        :class:`LayerMoments` with ``[L]`` float64 tensors on X's device.

    Raises:
        ValueError: non-finite values, a bad shape, n < 6, a constant layer, a bad ``sample_rows`` /
            ``max_tensor_bytes``, statistics that overflow float64.
    """
    sample_rows = _check_int(sample_rows, "sample_rows", 2)
    max_tensor_bytes = _check_int(max_tensor_bytes, "max_tensor_bytes", 0)
    Xs = as_stack(X, name)
    L, n, d = Xs.shape
    _check_n(n, name)
    Xc = Xs - Xs.mean(1, keepdim=True)
    check_variance(Xc, Xs, name, "the permutation null")
    k, C, stats = _second_order(Xc)
    if not third:
        _check_finite_stats(stats, name)
        return LayerMoments(n=n, **stats)
    s3 = (k * k * k).sum(1)
    r = (k * ((Xc @ C) * Xc).sum(-1)).sum(1)
    route = _cube_route(L, n, d, sample_rows, max_tensor_bytes)
    if route == "sample":
        idx = np.sort(np.argpartition(_row_keys(0, n, seed), sample_rows - 1)[:sample_rows])
        u, u_rows = _sampled_cube(Xc[:, torch.from_numpy(idx).to(Xc.device)], s3, n), sample_rows
    elif route == "tensor" and n > d * d:
        M = torch.zeros(L, d * d, d, dtype=F64, device=Xc.device)
        _tensor_add_(M, Xc)
        u, u_rows = (M * M).sum((-2, -1)), n
    else:
        u, u_rows = _gram_cubes(Xc)[0], n
    stats.update(s3=s3, r=r, u=u)
    _check_finite_stats(stats, name)
    return LayerMoments(n=n, u_rows=u_rows, **stats)


# ---------------------------------------------------------------------------------------------- streaming
def _chunk(x: Any, name: str, shape: tuple[int, int] | None, *, finite: bool = True) -> torch.Tensor:
    """Validate a chunk ``[L, m, d]`` (finite unless ``finite`` is False: then the caller checks it; same L and d
    as ``shape``) without a float64 copy of it."""
    xs = stack_shape(x, f"chunk (of {name})")
    if finite:
        column_range(xs, name)
    if shape is not None and (xs.shape[0], xs.shape[2]) != shape:
        raise ValueError(
            f"{name} chunk has (L, d)={(xs.shape[0], xs.shape[2])}, but earlier chunks had (L, d)={shape}"
        )
    return xs


class MomentSums:
    """First pass: running sums over rows of one stack (all layers), mergeable in any order.

    Keeps, for rows shifted by the first chunk's column means (``u = x - c``): ``n``, ``sum u`` ``[L, d]``,
    ``sum u u^T`` ``[L, d, d]``, ``sum a``, ``sum a^2`` ``[L]`` and ``sum a u`` ``[L, d]`` with ``a = ||u||^2``.
    :meth:`compute` re-centers them exactly at the column means and returns ``t1, t2, t3, s2, b``: enough for
    the null mean and standard deviation. :meth:`second_pass` freezes the means and ``C = Xc^T Xc`` for the
    pass that adds ``s3``, ``r`` and ``u`` (the skewness). Memory ``O(L d^2)`` float64 plus ``O(L block_rows d)``
    scratch (kept between calls, handed to the second pass, not pickled), whatever n.

    Precision: ``'float64'`` forms every sum in float64. ``'float32'`` (default; see the module docstring)
    forms ``sum u u^T`` as float32 GEMMs of the upper column-block triangle of rows shifted in float32
    arithmetic (:func:`_first_fast`; :func:`_first_exact` in float64 arithmetic where that would lose
    accuracy), in partials of :data:`F32_PARTIAL` rows added into float64 (``_U``, folded into ``_S`` with
    its exact float64 diagonal when read); every other sum is float64. The shift is then the first rows'
    rounded column means, exactly representable in float32.

    Args:
        name: the argument name used in error messages.
        block_rows: rows prepared at a time (float64 copies, or float32 ones on the float32 route).
        precision: ``'float32'`` (default) or ``'float64'``; the second pass inherits it.

    Attributes:
        n: rows seen so far.

    Raises:
        ValueError: a bad ``block_rows`` or ``precision``.
    """

    def __init__(self, *, name: str = "X", block_rows: int = 4096, precision: str = "float32"):
        self.name = name
        self.block_rows = _check_int(block_rows, "block_rows", 1)
        check_precision(precision)
        self.precision = precision
        self.n = 0
        self._shape: tuple[int, int] | None = None
        self._c = self._c32 = self._s = self._S = self._sa = self._saa = self._sau = self._U = self._sq = None
        self._f32 = False  # the float32 route (set with the width, at the first rows)
        self._massive_seen = False  # a block had massive rows (then tr C^3 is float64: it cancels with them)
        self._buffers: dict = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_buffers": {}}  # scratch buffers are not state

    def update(self, chunk: Any) -> "MomentSums":
        """Add rows ``chunk [L, m, d]`` (or ``[m, d]``), any real dtype and device.

        Raises:
            ValueError: ``chunk`` not a tensor or array of numbers (None, a string, an object array, a ragged
                list), non-finite values, a bad shape, or L / d that differ from earlier chunks.
        """
        xs = stack_shape(chunk, f"chunk (of {self.name})")
        device = xs.device if self._c is None else self._c.device
        f32 = _use_f32(self.precision, xs.shape[2], device)
        xs = _chunk(xs, self.name, self._shape, finite=not f32)
        if f32:
            _check_chunk_finite(xs, self.name)
        if self._S is None:
            self._allocate(xs.mean(1, dtype=F64) if self.precision == "float64" else _rough_means(xs))
            if not bool(torch.isfinite(self._c).all()):
                raise_non_finite(xs, self.name)
        xs = xs.to(self._c.device)
        if self._f32:
            self._update32(xs)
            return self
        for i in range(0, xs.shape[1], self.block_rows):
            u = xs[:, i : i + self.block_rows].to(F64) - self._c[:, None, :]
            a = (u * u).sum(-1)
            self._s += u.sum(1)
            self._S.baddbmm_(u.mT, u)
            self._sa += a.sum(1)
            self._saa += (a * a).sum(1)
            self._sau += (a[:, None, :] @ u)[:, 0]
        self.n += xs.shape[1]
        return self

    def _update32(self, xs: torch.Tensor) -> None:
        """:meth:`update` on the float32 route: blocks prepared by :func:`_first_fast` (float32 arithmetic) or
        :func:`_first_exact` (float64), products into the upper column blocks ``_U`` (see :meth:`_flush`)."""
        for i in range(0, xs.shape[1], self.block_rows):
            x = xs[:, i : i + self.block_rows]
            blk = None if x.dtype == F64 or self._c32 is None else _first_fast(x, self._c32, self._buffers)
            if blk is None:
                blk = _first_exact(x, self._c, self._buffers, self.name)
            self._s += blk.su
            self._sa += blk.a.sum(1)
            self._saa += (blk.a * blk.a).sum(1)
            self._sau += blk.sau
            _upper_add_(self._U, blk, self._buffers, self._splits)
            self._sq += blk.sq
            self._massive_seen |= blk.massive
        self.n += xs.shape[1]

    def _flush(self) -> None:
        """Fold the pending float32-route products ``_U`` into ``_S`` (which is then complete), with the exact
        float64 column sums of squares ``_sq`` as its diagonal."""
        if self._U is not None:
            _fold_upper_(self._S, self._U, self._splits)
            self._S.diagonal(dim1=-2, dim2=-1).copy_(self._sq)

    def _allocate(self, c: torch.Tensor) -> None:
        L, d = c.shape
        self._f32 = _use_f32(self.precision, d, c.device)
        self._shape = (L, d)
        c32 = c.to(F32)
        if self._f32 and bool(torch.isfinite(c32).all()):  # a shift float32 holds exactly: float32 arithmetic
            self._c, self._c32 = c32.to(F64), c32
        else:
            self._c, self._c32 = c.clone(), None
        z = dict(dtype=F64, device=c.device)
        self._s, self._sau = torch.zeros(L, d, **z), torch.zeros(L, d, **z)
        self._S = torch.zeros(L, d, d, **z)
        self._sa, self._saa = torch.zeros(L, **z), torch.zeros(L, **z)
        self._splits = _splits(d)
        if self._f32:
            self._U = [torch.zeros(L, b - a, d - a, **z) for a, b in self._splits]
            self._sq = torch.zeros(L, d, **z)

    def merge(self, other: "MomentSums") -> "MomentSums":
        """Add another first-pass accumulator's sums (in place, re-expressed at this shift) and return self.

        Raises:
            ValueError: not a MomentSums, or L / d that differ.
        """
        if not isinstance(other, MomentSums):
            raise ValueError(f"can only merge a MomentSums; got {type(other).__name__}")
        if other.n == 0:
            return self
        if self._S is None:
            self._allocate(other._c)
        elif other._shape != self._shape:
            raise ValueError(f"cannot merge sums of (L, d)={other._shape} into (L, d)={self._shape}")
        self._flush()
        other._flush()
        self._massive_seen |= other._massive_seen
        shifted = _reshift(other, self._c.to(other._c.device))
        for key, t in shifted.items():
            getattr(self, key).add_(t.to(self._c.device))
        if self._sq is not None:  # other's diagonal is exact after its flush
            self._sq += shifted["_S"].diagonal(dim1=-2, dim2=-1).to(self._c.device)
        self.n += other.n
        return self

    def _centered(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Column means ``[L, d]``, ``C [L, d, d]`` and the one-pass statistics, exactly re-centered."""
        if self.n == 0:
            raise ValueError(f"{self.name}: the accumulator is empty; call update() first")
        _check_n(self.n, self.name)
        self._flush()
        n, S = self.n, self._S
        m = self._s / n  # mean minus shift
        mm = (m * m).sum(-1)
        Sm = (S @ m[:, :, None])[:, :, 0]
        if self._f32:  # one pass over [L, d, d]
            C = torch.baddbmm(S, m[:, :, None], m[:, None, :], alpha=-n)
        else:
            C = S - n * m[:, :, None] * m[:, None, :]
        s2 = self._saa + 4 * (m * Sm).sum(-1) - 4 * (m * self._sau).sum(-1) + 2 * mm * self._sa - 3 * n * mm * mm
        v = self._sau - self._sa[:, None] * m - 2 * Sm + 2 * n * mm[:, None] * m
        stats = _from_gram_terms(C, s2, v, f32=self._f32 and not self._massive_seen)
        if self._f32:  # tr C from the squared norms that s2 sums too: their float32 rounding cancels in s2'
            stats["t1"] = self._sa - n * mm
        raw = self._sa + 2 * (self._c * self._s).sum(-1) + n * (self._c * self._c).sum(-1)
        _check_constant(stats["t1"], raw, self.name)
        _check_finite_stats(stats, self.name)
        return self._c + m, C, stats

    def compute(self) -> LayerMoments:
        """One-pass statistics (``s3``, ``r``, ``u`` None): the null mean and std, not the skewness.

        Raises:
            ValueError: empty accumulator, n < 6, a constant layer, overflow.
        """
        return LayerMoments(n=self.n, **self._centered()[2])

    def second_pass(
        self, *, sample_rows: int = SAMPLE_ROWS, max_tensor_bytes: int = MAX_TENSOR_BYTES, seed: int = 0
    ) -> "ThirdMomentSums":
        """An empty second-pass accumulator holding this pass's means and ``C`` (call once per worker).

        Args: as :func:`layer_moments`.

        Raises:
            ValueError: as :meth:`compute`, or a bad ``sample_rows`` / ``max_tensor_bytes``.
        """
        mean, C, stats = self._centered()
        second = ThirdMomentSums(
            LayerMoments(n=self.n, **stats), mean, C, sample_rows=sample_rows,
            max_tensor_bytes=max_tensor_bytes, seed=seed, name=self.name, precision=self.precision,
        )
        second._buffers, self._buffers = self._buffers, {}  # hand the scratch memory on (already paged in)
        return second


def _reshift(o: MomentSums, c: torch.Tensor) -> dict:
    """The sums of ``o`` for rows shifted by ``c`` instead of ``o``'s shift: ``u = u' + e``, ``e = c' - c``."""
    n, e = o.n, o._c - c
    s, S, sa, sau = o._s, o._S, o._sa, o._sau
    E = (e * e).sum(-1)
    se = (s * e).sum(-1)  # sum e.u'
    Se = (S @ e[:, :, None])[:, :, 0]  # sum (e.u') u'
    outer = s[:, :, None] * e[:, None, :]
    return dict(
        _s=s + n * e,
        _S=S + outer + outer.mT + n * e[:, :, None] * e[:, None, :],
        _sa=sa + 2 * se + n * E,
        _saa=o._saa + 4 * (e * Se).sum(-1) + n * E * E + 4 * (e * sau).sum(-1) + 2 * E * sa + 4 * E * se,
        _sau=sau + e * sa[:, None] + 2 * Se + 2 * e * se[:, None] + E[:, None] * s + n * E[:, None] * e,
    )


class ThirdMomentSums:
    """Second pass: ``s3``, ``r`` and ``u`` from rows centered at the first pass's exact column means.

    Made by :meth:`MomentSums.second_pass`; every worker takes its own from the same first pass, and the
    results merge in any order. Per row it costs ``O(d^2)`` (``xc^T C xc``) plus, for ``u``:

    - ``'tensor'`` route (``L d^3`` float64 fit ``max_tensor_bytes``): the third-moment tensor
      ``sum_i xc_i^(x3)``, ``O(d^3)`` per row, in float64; exact.
    - ``'rows'`` route (``n <= sample_rows``): the centered rows are kept (``L n d`` values); exact.
    - ``'sample'`` route: the ``sample_rows`` rows with the smallest seeded hash of their global index are
      kept (``L sample_rows d`` values, replaced in place); ``u`` is estimated from them (see the module
      docstring) and ``u_rows = sample_rows``. Chunks must say where they start (``start``).

    Precision (``precision``, from the first pass): ``'float64'`` runs everything in float64. ``'float32'``
    (default) centers rows in float32 arithmetic (:func:`_second_fast`; float64 where that would lose
    accuracy), keeps ``k`` and ``s3`` in float64 (massive rows' exact, from the input in float64), forms
    ``r = <C, sum_i k_i xc_i xc_i^T>`` from float32 GEMMs of the product's upper column-block triangle
    (:func:`_r_add32`), keeps the rows for ``u`` in float32 and takes their off-diagonal Gram cubes from
    float32 GEMMs (:func:`_off_cubes32`), ``u = s3 + off-diagonal``.

    Attributes:
        route: ``'tensor'``, ``'rows'`` or ``'sample'``.
        rows: rows seen so far in this pass.
    """

    def __init__(self, first: LayerMoments, mean: torch.Tensor, C: torch.Tensor, *, sample_rows: int,
                 max_tensor_bytes: int, seed: int, name: str = "X", precision: str = "float32"):
        self.sample_rows = _check_int(sample_rows, "sample_rows", 2)
        self.seed = int(seed)
        self.name = name
        self.first, self.mean, self.C = first, mean, C
        L, d = mean.shape
        self.route = _cube_route(L, first.n, d, self.sample_rows, _check_int(max_tensor_bytes, "max_tensor_bytes", 0))
        check_precision(precision)
        self._f32 = _use_f32(precision, d, mean.device)
        self._splits = _splits(d)
        self._Cw = _weighted_upper(C, self._splits) if self._f32 else None
        self._mean32 = mean.to(F32)  # centering in float32 arithmetic needs the means in float32's range
        self._mean32 = self._mean32 if bool(torch.isfinite(self._mean32).all()) else None
        delta = mean - self._mean32.to(F64) if self._mean32 is not None else mean
        small = delta.square().sum(-1) <= 2.0**-40 * first.t1 / first.n  # what float32 misses of the means
        self._delta32 = None if bool(small.all()) else delta.to(F32)
        self.rows = 0
        z = dict(dtype=F64, device=mean.device)
        self._s3, self._r = torch.zeros(L, **z), torch.zeros(L, **z)
        self._M = torch.zeros(L, d * d, d, **z) if self.route == "tensor" else None
        # centered rows ('rows' and 'sample' routes; float32 on the float32 route, where u uses them in float32)
        self._kept = torch.zeros(L, 0, d, dtype=F32 if self._f32 else F64, device=mean.device)
        self._keys = np.zeros(0, dtype=np.uint64)  # their row keys ('sample' route)
        self._buffers: dict = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_buffers": {}}  # scratch buffers are not state

    def update(self, chunk: Any, start: int | None = None) -> "ThirdMomentSums":
        """Add rows ``chunk [L, m, d]`` (the same rows as the first pass, in any chunking and order).

        Args:
            chunk: any real dtype and device.
            start: global index (0-based, in the first pass's row order) of the chunk's first row; required
                on the ``'sample'`` route, where it selects the subsample, ignored otherwise.

        Raises:
            ValueError: non-finite values, L / d that differ from the first pass, a missing or negative
                ``start`` on the ``'sample'`` route.
        """
        xs = _chunk(chunk, self.name, tuple(self.mean.shape), finite=not self._f32).to(self.mean.device)
        if self._f32:
            _check_chunk_finite(xs, self.name)
        L, m, d = xs.shape
        if self.route == "sample":
            if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
                raise ValueError(
                    f"start must be the global index (>= 0) of the chunk's first row when u is subsampled "
                    f"(n={self.first.n} > sample_rows={self.sample_rows}); got start={start!r}"
                )
            keys = _row_keys(int(start), m, self.seed)
        step = BLOCK_ROWS32 if self._f32 else BLOCK_ROWS
        for i in range(0, m, step):
            if self._f32:
                self._update32(xs[:, i : i + step], None if self.route != "sample" else keys[i : i + step])
                continue
            xc = xs[:, i : i + step].to(F64) - self.mean[:, None, :]
            k = (xc * xc).sum(-1)
            self._r += (k * ((xc @ self.C) * xc).sum(-1)).sum(1)
            self._s3 += (k * k * k).sum(1)
            self._keep_rows(xc, keys[i : i + step] if self.route == "sample" else None)
        self.rows += m
        return self

    def _update32(self, x: torch.Tensor, keys: np.ndarray | None) -> None:
        """One block on the float32 route: rows centered in float32 arithmetic (:func:`_second_fast`), or in
        float64 (float64 input, values out of float32's range, too many massive rows); massive rows exact."""
        L, b, d = x.shape
        fast = x.dtype != F64 and self._mean32 is not None and self._M is None  # 'tensor': O(d^3) per row anyway
        prep = _second_fast(x, self._mean32, self._delta32, self._buffers) if fast else None
        if prep is not None:
            xc, k = prep
            big, q = _massive(k)
            if q > MASSIVE_SHARE * b:
                prep = None
        if prep is None:
            xc = _buffer(self._buffers, "x", (L, b, d), F64, x.device)
            xc.copy_(x).sub_(self.mean[:, None, :])
            k = _sqnorms(xc)
            if not bool(torch.isfinite(k).all()):
                raise_non_finite(x, self.name)
            big, q = _massive(k)
        massive = None
        if big is not None and q <= MASSIVE_SHARE * b:
            R, kR, k = _exact_massive(k, xc, big, q) if prep is None else _exact_massive(k, x, big, q, shift=self.mean)
            massive = (big, R, kR)
        self._s3 += (k * k * k).sum(1)
        self._keep_rows(xc, keys)
        if q > MASSIVE_SHARE * b:  # the whole block in float64
            self._r += (k * ((xc @ self.C) * xc).sum(-1)).sum(1)
        else:  # last: it overwrites xc
            self._r += _r_add32(xc, k, massive, self.C, self._Cw, self._buffers, self._splits)

    def _keep_rows(self, xc: torch.Tensor, keys: np.ndarray | None) -> None:
        """What the route of ``u`` keeps of centered rows ``xc [L, b, d]`` (copies, in ``_kept``'s dtype)."""
        if self._M is not None:
            _tensor_add_(self._M, xc.to(F64))
        elif self.route == "rows":
            self._kept = torch.cat([self._kept, xc.to(self._kept.dtype)], 1)
        else:
            self._keep(xc, keys)

    def _keep(self, xc: torch.Tensor, keys: np.ndarray) -> None:
        """Add rows ``xc [L, b, d]`` (any float dtype) with their keys to the subsample, which keeps the
        ``sample_rows`` smallest keys (``_kept [L, sample_rows, d]``, float32 on the float32 route, its first
        ``len(_keys)`` rows filled). Rows fill the free slots first; then the rows whose keys are among the
        smallest enter, each overwriting a row it evicts (no copy of the subsample per block).
        """
        m = self.sample_rows
        every = np.concatenate([self._keys, keys])
        if np.unique(every).size != every.size:
            raise ValueError(
                "start: the same global row index was given twice (overlapping chunk ranges); each row of the "
                "n rows must be passed exactly once"
            )
        if self._kept.shape[1] < m:
            self._kept = torch.empty(xc.shape[0], m, xc.shape[2], dtype=self._kept.dtype, device=xc.device)
        have = self._keys.size
        fill = min(m - have, keys.size)
        if fill:
            self._kept[:, have : have + fill] = xc[:, :fill]
            self._keys = np.concatenate([self._keys, keys[:fill]])
            keys, xc = keys[fill:], xc[:, fill:]
        if keys.size:  # the m smallest of kept and new keys: new rows that enter take the evicted rows' slots
            idx = np.argpartition(np.concatenate([self._keys, keys]), m - 1)[:m]
            new = idx[idx >= m] - m
            out = np.setdiff1d(np.arange(m), idx[idx < m])
            rows = torch.index_select(xc, 1, torch.from_numpy(new).to(xc.device))
            self._kept[:, torch.from_numpy(out).to(xc.device)] = rows.to(self._kept.dtype)
            self._keys[out] = keys[new]

    def merge(self, other: "ThirdMomentSums") -> "ThirdMomentSums":
        """Add another second-pass accumulator of the same first pass (in place) and return self.

        Raises:
            ValueError: not a ThirdMomentSums, or one from another first pass or with other options.
        """
        if not isinstance(other, ThirdMomentSums):
            raise ValueError(f"can only merge a ThirdMomentSums; got {type(other).__name__}")
        same = (
            other.first.n == self.first.n and other.route == self.route and other.seed == self.seed
            and other.sample_rows == self.sample_rows and torch.equal(other.mean.to(self.mean.device), self.mean)
        )
        if not same:
            raise ValueError("cannot merge second passes of different first passes or with other options")
        self._s3 += other._s3.to(self._s3.device)
        self._r += other._r.to(self._r.device)
        if self._M is not None:
            self._M += other._M.to(self._M.device)
        elif self.route == "rows":
            self._kept = torch.cat([self._kept, other._kept.to(self._kept)], 1)
        else:
            self._keep(other._kept[:, : other._keys.size].to(self._kept), other._keys)
        self.rows += other.rows
        return self

    def compute(self) -> LayerMoments:
        """All statistics: the first pass's ``t1, t2, t3, s2, b`` plus ``s3``, ``r``, ``u`` and ``u_rows``.

        Raises:
            ValueError: the rows seen in this pass are not the first pass's n, or overflow.
        """
        n = self.first.n
        if self.rows != n:
            raise ValueError(
                f"{self.name}: the second pass saw {self.rows} rows, the first pass n={n}; pass every row once"
            )
        m = self.sample_rows
        if self._M is not None:
            u, u_rows = (self._M * self._M).sum((-2, -1)), n
        elif self.route == "rows":  # float32: the diagonal is s3 itself, so the two agree where they cancel
            u, u_rows = self._s3 + _off_cubes32(self._kept) if self._f32 else _gram_cubes(self._kept)[0], n
        else:  # rows in key order: the same sums whatever the chunking and merge order
            order = torch.from_numpy(np.argsort(self._keys)).to(self._kept.device)
            if self._f32:
                u = self._s3 + _off_cubes32(self._kept, order) * (n * (n - 1.0) / (m * (m - 1.0)))
            else:
                u = _sampled_cube(self._kept[:, order], self._s3, n)
            u_rows = m
        stats = dict(s3=self._s3.clone(), r=self._r.clone(), u=u)
        _check_finite_stats(stats, self.name)
        return replace(self.first, u_rows=u_rows, **stats)


# ---------------------------------------------------------------------------------------------- moments
def _trace_free(mo: LayerMoments) -> dict:
    """Statistics of ``K' = K - tr(K)/(n-1) H`` (``H`` the centering matrix), whose trace is 0.

    ``<K', P L P^T> = <K, P L P^T> - tr K tr L / (n-1)`` for every permutation, so the variance and third
    cumulant are those of ``K`` while the mean is 0: the third cumulant comes out of the third moment
    without the cancellation of ``mean^3`` against it.
    """
    n, t1 = float(mo.n), mo.t1
    tau, eps = t1 / (n - 1), t1 / n
    s2 = mo.s2 - t1 * eps
    out = dict(t2=mo.t2 - t1 * tau, s2=s2)
    if mo.has_third:
        out.update(
            t3=mo.t3 - 3 * tau * mo.t2 + 3 * tau * tau * t1 - tau**3 * (n - 1),
            s3=mo.s3 - 3 * eps * mo.s2 + 3 * eps * eps * t1 - n * eps**3,
            b=mo.b - tau * s2,
            r=mo.r - eps * mo.t2 - 2 * tau * s2,
            u=mo.u - 3 * tau * (mo.s2 - mo.t2 / n) + 3 * tau * tau * (1 - 2 / n) * t1 - tau**3 * (n - 1) * (n - 2) / n,
        )
    return out


def _u_centered(x: dict, n: int) -> dict:
    """Statistics of the U-centered Gram (zero diagonal and row sums) from trace-free ones ``x``.

    For ``i != j``: ``K~_ij = K'_ij + (k'_i + k'_j) / (n-2)``; its ``t2``, ``t3``, ``u`` follow exactly from
    ``t2, t3, s2, s3, b, r, u`` of ``K'`` (U-centering ignores the ``H`` shift); its other statistics are 0.
    """
    a, g = 1.0 / (n - 2), n / (n - 2.0)
    out = dict(t2=x["t2"] - g * x["s2"])
    for key in ("s2", "s3", "b", "r"):
        out[key] = torch.zeros_like(x["t2"])
    if "u" in x:
        s3, b, r = x["s3"], x["b"], x["r"]
        out["t3"] = x["t3"] + 3 * a * a * n * b - 3 * g * (r + 2 * a * b + a * a * n * s3) + 2 * g**3 * s3
        out["u"] = x["u"] + 6 * a * r + 6 * a * a * b + (2 * n * a**3 - g**3) * s3
    return out


def _variance(n: int, x: dict, y: dict) -> torch.Tensor:
    """Permutation variance ``[La, Lb]`` of ``<K, P L P^T>`` for trace-free ``K``, ``L`` (Kazi-Aoual et al.)."""
    n = float(n)
    t2x, t2y = x["t2"][:, None], y["t2"][None, :]
    ex = n * (n + 1) * x["s2"][:, None] - 2 * (n - 1) * t2x
    ey = n * (n + 1) * y["s2"][None, :] - 2 * (n - 1) * t2y
    return 2 * t2x * t2y / ((n + 1) * (n - 2)) + ex * ey / ((n + 1) * n * (n - 1) * (n - 2) * (n - 3))


def _third_cumulant(n: int, x: dict, y: dict) -> torch.Tensor:
    """Third permutation moment ``[La, Lb]`` of ``<K, P L P^T>`` for trace-free ``K``, ``L`` (mean 0, so the
    third cumulant): Kazi-Aoual et al. (1995), as in FactoMineR's ``coeffRV``, with the ``tr K`` terms 0.
    """
    n = float(n)
    X = {k: v[:, None] for k, v in x.items()}
    Y = {k: v[None, :] for k, v in y.items()}

    def sym(p: str, q: str) -> torch.Tensor:
        return X[p] * Y[q] + X[q] * Y[p]

    total = (
        n * n * (n + 1) * (n * n + 15 * n - 4) * X["s3"] * Y["s3"]
        + 4 * (n**4 - 8 * n**3 + 19 * n * n - 4 * n - 16) * X["u"] * Y["u"]
        + 24 * (n * n - n - 4) * sym("u", "b")
        + 6 * (n**4 - 8 * n**3 + 21 * n * n - 6 * n - 24) * X["b"] * Y["b"]
        + 12 * (n**4 - n**3 - 8 * n * n + 36 * n - 48) * X["r"] * Y["r"]
        + 24 * (n**3 - 3 * n * n - 2 * n + 8) * sym("r", "u")
        + 24 * (n**3 - 2 * n * n - 3 * n + 12) * sym("r", "b")
        - 2 * n * (n - 1) * (n * n - n + 4) * (2 * sym("u", "s3") + 3 * sym("b", "s3"))
        - 12 * n * (n - 1) ** 2 * (n + 4) * sym("r", "s3")
        + 16 * n * (n - 1) * (n - 2) * sym("t3", "s3")
        + 8 * (n**3 - 9 * n * n + 26 * n - 22) * X["t3"] * Y["t3"]
        - 8 * (3 * n * n - 15 * n + 16) * sym("t3", "u")
        - 8 * (3 * n * n - 15 * n + 24) * sym("t3", "b")
        - 8 * (n - 2) * (3 * n * n - 15 * n + 24) * sym("t3", "r")
    )
    return total / (n * (n - 1.0) * (n - 2) * (n - 3) * (n - 4) * (n - 5))


def _pearson3_upper(z: torch.Tensor, skew: torch.Tensor) -> torch.Tensor:
    """``P(Z >= z)`` for a standardized Pearson type III variable of skewness ``skew`` (normal near 0).

    ``Z = sign(a) (G - 2/|a|)`` with ``G ~ Gamma(shape 4/a^2, scale |a|/2)`` (mean 0, variance 1, skewness a).
    """
    normal = 0.5 * torch.special.erfc(z / math.sqrt(2.0))
    small = skew.abs() < NORMAL_SKEW
    a = torch.where(small, torch.ones_like(skew), skew.abs())
    shape = 4.0 / (a * a)
    up = torch.special.gammaincc(shape, ((z + 2.0 / a) * (2.0 / a)).clamp(min=0.0))
    down = torch.special.gammainc(shape, ((2.0 / a - z) * (2.0 / a)).clamp(min=0.0))
    return torch.where(small, normal, torch.where(skew > 0, up, down))


def _check_null_inputs(mx: Any, my: Any, observed: Any, measure: str) -> tuple[int, torch.Tensor]:
    for arg, mo in (("moments_x", mx), ("moments_y", my)):
        if not isinstance(mo, LayerMoments):
            raise ValueError(
                f"{measure}: {arg} must be LayerMoments (layer_moments / MomentSums); got {type(mo).__name__}"
            )
    if mx.n != my.n:
        raise ValueError(f"{measure}: moments_x and moments_y must be of the same rows; got n={mx.n} and n={my.n}")
    _check_n(mx.n, "moments_x")
    obs = as_tensor(observed, "observed", "[La, Lb]").to(dtype=F64, device=mx.t1.device)
    La, Lb = mx.t1.shape[0], my.t1.shape[0]
    if obs.shape != (La, Lb):
        raise ValueError(f"{measure}: observed must have shape [La, Lb]=[{La}, {Lb}]; got {list(obs.shape)}")
    if not bool(torch.isfinite(obs).all()):
        raise ValueError(f"{measure}: observed contains NaN/inf; every observed value must be finite")
    for arg, mo in (("moments_x", mx), ("moments_y", my)):
        _check_constant(mo.t1, torch.zeros_like(mo.t1), arg)
    return mx.n, obs


def _finish(obs, mean, std, skew, approx, n, mx, my) -> AnalyticNull:
    """p-values (a point-mass null, ``std ~ 0``, gives 1: the observed value is one of the permutations)."""
    point = std <= POINT_MASS_RTOL * torch.maximum(mean.abs(), torch.full_like(mean, 1e-300))
    safe = torch.where(point, torch.ones_like(std), std)
    skew = torch.where(point | ~torch.isfinite(skew), torch.zeros_like(skew), skew)
    p = _pearson3_upper((obs - mean) / safe, skew)
    p = torch.where(point, torch.ones_like(p), p)
    sub = [m.u_rows for m in (mx, my) if m.u_rows is not None and m.u_rows < n]
    return AnalyticNull(obs, mean, std, skew, p, approx, n, min(sub) if sub else None)


def linear_cka_null(moments_x: LayerMoments, moments_y: LayerMoments, observed: Any) -> AnalyticNull:
    """Closed-form permutation null of linear CKA (the RV coefficient) for all layer pairs.

    Moments of ``RV = <K, P L P^T> / sqrt(tr K^2 tr L^2)`` over all row permutations ``P`` of Y (Kazi-Aoual
    et al. 1995; Josse, Pages & Husson 2008): mean ``t1x t1y / ((n-1) sqrt(t2x t2y))``, the exact variance and
    third cumulant, and a one-sided upper-tail p-value from the Pearson type III distribution with those
    moments (normal when ``|skewness| < 1e-4``, or when the statistics are first-pass only, then
    ``approximation='normal'``). Batched over layer pairs; everything float64.

    Args:
        moments_x: :class:`LayerMoments` of X (``[La]``), from :func:`layer_moments` or the accumulators.
        moments_y: :class:`LayerMoments` of Y (``[Lb]``), same n.
        observed: linear CKA ``[La, Lb]`` (e.g. :func:`~homoscope.measures.linear_cka`).

    Returns:
        :class:`AnalyticNull` (``mean``, ``std``, ``skewness``, ``p_value`` ``[La, Lb]`` float64).

    Raises:
        ValueError: moments of different n, n < 6, a constant layer, ``observed`` of the wrong shape or
            non-finite.
    """
    n, obs = _check_null_inputs(moments_x, moments_y, observed, "linear_cka_null")
    x, y = _trace_free(moments_x), _trace_free(moments_y)
    norm2 = moments_x.t2[:, None] * moments_y.t2[None, :]
    var_t = _variance(n, x, y).clamp(min=0.0)
    mean = moments_x.t1[:, None] * moments_y.t1[None, :] / ((n - 1) * norm2.sqrt())
    std = (var_t / norm2).sqrt()
    third = moments_x.has_third and moments_y.has_third
    skew = _third_cumulant(n, x, y) / var_t**1.5 if third else torch.zeros_like(mean)
    return _finish(obs, mean, std, skew, "pearson3" if third else "normal", n, moments_x, moments_y)


def debiased_cka_null(
    moments_x: LayerMoments, moments_y: LayerMoments, observed: Any, *, method: str = "pearson3"
) -> AnalyticNull:
    """Closed-form permutation null of debiased CKA (unbiased HSIC) for all layer pairs.

    The U-centered Grams have zero diagonals and row sums, so over all row permutations of Y the mean is
    exactly 0 and the standard deviation exactly ``sqrt(2 / (n (n - 3)))`` for any data (Mantel's moments;
    Szekely & Rizzo 2013, 2014). The skewness is the Kazi-Aoual third moment of the U-centered Grams.

    Args:
        moments_x, moments_y: :class:`LayerMoments` of X (``[La]``) and Y (``[Lb]``), same n.
        observed: debiased CKA ``[La, Lb]`` (e.g. :func:`~homoscope.measures.debiased_cka`).
        method: ``'pearson3'`` (default: Pearson type III with the exact skewness; normal when the
            statistics are first-pass only) or ``'t'`` (the Szekely-Rizzo t-test: ``T = sqrt(v-1) R /
            sqrt(1-R^2)`` against Student's t with ``v - 1`` degrees of freedom, ``v = n(n-3)/2``).

    Returns:
        :class:`AnalyticNull` (``[La, Lb]`` float64; ``skewness`` 0 unless ``'pearson3'`` had all statistics).

    Raises:
        ValueError: as :func:`linear_cka_null`, a bad ``method``, or a layer whose U-centered Gram is 0.
    """
    if method not in ("pearson3", "t"):
        raise ValueError(f"debiased_cka_null: method must be 'pearson3' or 't'; got method={method!r}")
    n, obs = _check_null_inputs(moments_x, moments_y, observed, "debiased_cka_null")
    x = _u_centered(_trace_free(moments_x), n)
    y = _u_centered(_trace_free(moments_y), n)
    for arg, st, mo in (("moments_x", x, moments_x), ("moments_y", y, moments_y)):
        bad = (st["t2"] <= 1e-12 * mo.t2).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"debiased_cka_null: {arg} layer {bad[0]} has a zero U-centered Gram (unbiased HSIC 0)")
    mean = torch.zeros_like(obs)
    std = torch.full_like(obs, math.sqrt(2.0 / (n * (n - 3.0))))
    if method == "t":
        from scipy.stats import t as student_t

        v = n * (n - 3) / 2.0
        R = obs.clamp(-1.0, 1.0)
        T = math.sqrt(v - 1.0) * R / (1.0 - R * R).clamp(min=1e-300).sqrt()
        p = torch.as_tensor(student_t.sf(T.cpu().numpy(), v - 1.0), dtype=F64, device=obs.device)
        return AnalyticNull(obs, mean, std, torch.zeros_like(obs), p, "t", n, None)
    third = moments_x.has_third and moments_y.has_third
    var_t = 2.0 * x["t2"][:, None] * y["t2"][None, :] / (n * (n - 3.0))
    skew = _third_cumulant(n, x, y) / var_t**1.5 if third else torch.zeros_like(mean)
    return _finish(obs, mean, std, skew, "pearson3" if third else "normal", n, moments_x, moments_y)


def analytic_null(
    name: str,
    X: Any,
    Y: Any,
    *,
    method: str = "pearson3",
    sample_rows: int = SAMPLE_ROWS,
    max_tensor_bytes: int = MAX_TENSOR_BYTES,
    seed: int = 0,
) -> AnalyticNull:
    """Closed-form permutation null of ``linear_cka`` or ``debiased_cka`` for stacks held in memory.

    Computes the measure (float64) and :func:`layer_moments` of both stacks, then :func:`linear_cka_null`
    or :func:`debiased_cka_null`. Same role as :func:`~homoscope.measures.permutation_null` with no
    permutation drawn.

    Args:
        name: ``'linear_cka'`` or ``'debiased_cka'``.
        X: ``[La, n, da]`` or ``[n, da]``; Y: ``[Lb, n, db]`` or ``[n, db]``; any real dtype and device.
        method: for ``debiased_cka``: ``'pearson3'`` or ``'t'`` (see :func:`debiased_cka_null`).
        sample_rows, max_tensor_bytes, seed: as :func:`layer_moments`.

    Returns:
        :class:`AnalyticNull` with ``[La, Lb]`` float64 tensors.

    Raises:
        ValueError: an unsupported ``name``, or any rule of the measure, :func:`layer_moments` or the null.
    """
    from .cka import debiased_cka, linear_cka

    if name not in ("linear_cka", "debiased_cka"):
        raise ValueError(f"analytic_null: name must be 'linear_cka' or 'debiased_cka'; got name={name!r}")
    opts = dict(sample_rows=sample_rows, max_tensor_bytes=max_tensor_bytes, seed=seed)
    mx, my = layer_moments(X, name="X", **opts), layer_moments(Y, name="Y", **opts)
    if mx.n != my.n:
        raise ValueError(f"X and Y must have the same number of rows (units): X has n={mx.n}, Y has n={my.n}")
    if name == "linear_cka":
        return linear_cka_null(mx, my, linear_cka(X, Y, precision="float64"))
    return debiased_cka_null(mx, my, debiased_cka(X, Y, precision="float64"), method=method)


__all__ = [
    "AnalyticNull",
    "LayerMoments",
    "MomentSums",
    "ThirdMomentSums",
    "analytic_null",
    "debiased_cka_null",
    "layer_moments",
    "linear_cka_null",
]
