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
from typing import Any

import numpy as np
import torch

from ._validate import ZERO_VARIANCE_RTOL, as_stack, check_variance, column_range, stack_shape

F64 = torch.float64
MIN_N = 6  # the third permutation moment divides by n(n-1)(n-2)(n-3)(n-4)(n-5)
SAMPLE_ROWS = 2048
MAX_TENSOR_BYTES = 2**28
BLOCK_ROWS = 1024
# |skewness| below which the Pearson type III tail is replaced by the normal one: they differ by < 1e-5
# there, and the gamma tail loses accuracy to the size of its shape parameter 4 / skewness^2 below it
NORMAL_SKEW = 1e-4
# relative null standard deviation below which the permutation distribution counts as a point mass
POINT_MASS_RTOL = 1e-12


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


def _from_gram_terms(C: torch.Tensor, s2: torch.Tensor, v: torch.Tensor) -> dict:
    """``t1, t2, t3, s2, b`` from ``C [L, d, d]``, ``s2 [L]`` and ``v = sum_i k_i xc_i [L, d]``."""
    return dict(
        t1=C.diagonal(dim1=-2, dim2=-1).sum(-1),
        t2=(C * C).sum((-2, -1)),
        t3=((C @ C) * C).sum((-2, -1)),
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
    (same rule for ``u``: exact when the ``L d^3`` third-moment tensor fits ``max_tensor_bytes`` or
    ``n <= sample_rows``, else the seeded subsample of ``sample_rows`` rows, rows indexed ``0 .. n-1``).
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
def _chunk(x: Any, name: str, shape: tuple[int, int] | None) -> torch.Tensor:
    """Validate a chunk ``[L, m, d]`` (finite; same L and d as ``shape``) without a float64 copy of it."""
    xs = stack_shape(x, name)
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
    pass that adds ``s3``, ``r`` and ``u`` (the skewness). Memory ``O(L d^2)`` float64, whatever n.

    Args:
        name: the argument name used in error messages.
        block_rows: rows converted to float64 at a time.

    Attributes:
        n: rows seen so far.
    """

    def __init__(self, *, name: str = "X", block_rows: int = 4096):
        self.name = name
        self.block_rows = _check_int(block_rows, "block_rows", 1)
        self.n = 0
        self._shape: tuple[int, int] | None = None
        self._c = self._s = self._S = self._sa = self._saa = self._sau = None

    def update(self, chunk: Any) -> "MomentSums":
        """Add rows ``chunk [L, m, d]`` (or ``[m, d]``), any real dtype and device.

        Raises:
            ValueError: non-finite values, a bad shape, or L / d that differ from earlier chunks.
        """
        xs = _chunk(chunk, self.name, self._shape)
        if self._S is None:
            self._allocate(xs.mean(1, dtype=F64))
        xs = xs.to(self._c.device)
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

    def _allocate(self, c: torch.Tensor) -> None:
        L, d = c.shape
        self._shape = (L, d)
        self._c = c.clone()
        z = dict(dtype=F64, device=c.device)
        self._s, self._sau = torch.zeros(L, d, **z), torch.zeros(L, d, **z)
        self._S = torch.zeros(L, d, d, **z)
        self._sa, self._saa = torch.zeros(L, **z), torch.zeros(L, **z)

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
        for key, t in _reshift(other, self._c.to(other._c.device)).items():
            getattr(self, key).add_(t.to(self._c.device))
        self.n += other.n
        return self

    def _centered(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Column means ``[L, d]``, ``C [L, d, d]`` and the one-pass statistics, exactly re-centered."""
        if self.n == 0:
            raise ValueError(f"{self.name}: the accumulator is empty; call update() first")
        _check_n(self.n, self.name)
        n, S = self.n, self._S
        m = self._s / n  # mean minus shift
        mm = (m * m).sum(-1)
        Sm = (S @ m[:, :, None])[:, :, 0]
        C = S - n * m[:, :, None] * m[:, None, :]
        s2 = self._saa + 4 * (m * Sm).sum(-1) - 4 * (m * self._sau).sum(-1) + 2 * mm * self._sa - 3 * n * mm * mm
        v = self._sau - self._sa[:, None] * m - 2 * Sm + 2 * n * mm[:, None] * m
        stats = _from_gram_terms(C, s2, v)
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
        return ThirdMomentSums(
            LayerMoments(n=self.n, **stats), mean, C, sample_rows=sample_rows,
            max_tensor_bytes=max_tensor_bytes, seed=seed, name=self.name,
        )


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
      ``sum_i xc_i^(x3)``, ``O(d^3)`` per row; exact.
    - ``'rows'`` route (``n <= sample_rows``): the centered rows are kept (``L n d`` float64); exact.
    - ``'sample'`` route: the ``sample_rows`` rows with the smallest seeded hash of their global index are
      kept (``L sample_rows d`` float64, twice that while merging); ``u`` is estimated from them (see the
      module docstring) and ``u_rows = sample_rows``. Chunks must say where they start (``start``).

    Attributes:
        route: ``'tensor'``, ``'rows'`` or ``'sample'``.
        rows: rows seen so far in this pass.
    """

    def __init__(self, first: LayerMoments, mean: torch.Tensor, C: torch.Tensor, *, sample_rows: int,
                 max_tensor_bytes: int, seed: int, name: str = "X"):
        self.sample_rows = _check_int(sample_rows, "sample_rows", 2)
        self.seed = int(seed)
        self.name = name
        self.first, self.mean, self.C = first, mean, C
        L, d = mean.shape
        self.route = _cube_route(L, first.n, d, self.sample_rows, _check_int(max_tensor_bytes, "max_tensor_bytes", 0))
        self.rows = 0
        z = dict(dtype=F64, device=mean.device)
        self._s3, self._r = torch.zeros(L, **z), torch.zeros(L, **z)
        self._M = torch.zeros(L, d * d, d, **z) if self.route == "tensor" else None
        self._kept = torch.zeros(L, 0, d, **z)  # centered rows ('rows' and 'sample' routes)
        self._keys = np.zeros(0, dtype=np.uint64)  # their row keys ('sample' route)

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
        xs = _chunk(chunk, self.name, tuple(self.mean.shape)).to(self.mean.device)
        m = xs.shape[1]
        if self.route == "sample":
            if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
                raise ValueError(
                    f"start must be the global index (>= 0) of the chunk's first row when u is subsampled "
                    f"(n={self.first.n} > sample_rows={self.sample_rows}); got start={start!r}"
                )
            keys = _row_keys(int(start), m, self.seed)
        for i in range(0, m, BLOCK_ROWS):
            xc = xs[:, i : i + BLOCK_ROWS].to(F64) - self.mean[:, None, :]
            k = (xc * xc).sum(-1)
            self._s3 += (k * k * k).sum(1)
            self._r += (k * ((xc @ self.C) * xc).sum(-1)).sum(1)
            if self._M is not None:
                _tensor_add_(self._M, xc)
            elif self.route == "rows":
                self._kept = torch.cat([self._kept, xc], 1)
            else:
                self._keep(xc, keys[i : i + BLOCK_ROWS])
        self.rows += m
        return self

    def _keep(self, xc: torch.Tensor, keys: np.ndarray) -> None:
        """Add rows with their keys to the subsample and keep the ``sample_rows`` smallest keys."""
        keys = np.concatenate([self._keys, keys])
        rows = torch.cat([self._kept, xc], 1)
        if np.unique(keys).size != keys.size:
            raise ValueError(
                "start: the same global row index was given twice (overlapping chunk ranges); each row of the "
                "n rows must be passed exactly once"
            )
        if keys.size > self.sample_rows:
            idx = np.sort(np.argpartition(keys, self.sample_rows - 1)[: self.sample_rows])
            keys, rows = keys[idx], rows[:, torch.from_numpy(idx).to(rows.device)]
        self._keys, self._kept = keys, rows

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
            self._kept = torch.cat([self._kept, other._kept.to(self._kept.device)], 1)
        else:
            self._keep(other._kept.to(self._kept.device), other._keys)
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
        if self._M is not None:
            u, u_rows = (self._M * self._M).sum((-2, -1)), n
        elif self.route == "rows":
            u, u_rows = _gram_cubes(self._kept)[0], n
        else:
            u, u_rows = _sampled_cube(self._kept, self._s3, n), self.sample_rows
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
    obs = torch.as_tensor(observed, dtype=F64, device=mx.t1.device)
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
