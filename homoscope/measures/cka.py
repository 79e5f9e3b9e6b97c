"""Centered kernel alignment (CKA) for all layer pairs.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) between the Gram (kernel) matrices of two
representations of the same n units.

- :func:`linear_cka`: linear kernel, biased HSIC (Kornblith et al. 2019, "Similarity of Neural
  Network Representations Revisited", ICML).
- :func:`debiased_cka`: linear kernel, unbiased HSIC (Song et al. 2012, "Feature Selection via
  Dependence Maximization", JMLR; U-centering of Szekely & Rizzo 2014).
- :func:`rbf_cka`: Gaussian kernel with bandwidth ``threshold x median pairwise distance``
  (Kornblith et al. 2019).
- :func:`minibatch_cka`: ratio of HSIC sums accumulated over minibatches (Nguyen, Raghu & Kornblith
  2021, "Do Wide and Deep Networks Learn the Same Things?", ICLR).

All layer pairs come from one GEMM: either of flattened ``[n, n]`` Gram matrices (Gram route) or of
concatenated ``[n, d]`` features (feature route, ``||X_a^T Y_b||_F^2`` per block). The route is picked
from n and d by estimated cost; both give the same number up to float64 rounding (~1e-12).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import _linalg as la
from ._validate import check_min_n, check_option_positive, prepare_pair

ROUTES = ("auto", "gram", "feature")
# Keep the Gram route's [L, n, n] stacks under this many bytes when the route is picked automatically.
GRAM_ROUTE_BYTES = 3 * 2**30


def choose_route(n: int, La: int, da: int, Lb: int, db: int, route: str = "auto") -> str:
    """Pick ``'gram'`` or ``'feature'`` for linear-kernel CKA by estimated flops (and Gram memory).

    Raises:
        ValueError: ``route`` not one of ``'auto'``, ``'gram'``, ``'feature'``.
    """
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}; got route={route!r}")
    if route != "auto":
        return route
    gram_cost = n * n * (La * da + Lb * db + La * Lb)
    feat_cost = n * (La * da * Lb * db + La * da * da + Lb * db * db)
    if (La + Lb) * n * n * 8 > GRAM_ROUTE_BYTES:
        return "feature"
    return "gram" if gram_cost <= feat_cost else "feature"


def _linear_terms(Xc: torch.Tensor, Yc: torch.Tensor, route: str):
    """Inner products of centered linear Grams and their diagonals.

    Returns ``cross [La, Lb] = <K_a, L_b>``, ``sx [La] = <K_a, K_a>``, ``sy [Lb]``, ``kx [La, n]`` (row
    squared norms = diag K_a) and ``ky [Lb, n]``, for ``K_a = Xc_a Xc_a^T``, ``L_b = Yc_b Yc_b^T``.
    """
    La, n, da = Xc.shape
    Lb, _, db = Yc.shape
    route = choose_route(n, La, da, Lb, db, route)
    if route == "gram":
        K, L = la.gram(Xc), la.gram(Yc)
        cross = la.flat_inner(K, L)
        sx, sy = la.self_inner(K), la.self_inner(L)
        kx = K.diagonal(dim1=-2, dim2=-1).clone()
        ky = L.diagonal(dim1=-2, dim2=-1).clone()
    else:
        cross = la.cross_sqnorms(Xc, Yc)
        sx, sy = la.self_sqnorms(Xc), la.self_sqnorms(Yc)
        kx, ky = (Xc * Xc).sum(-1), (Yc * Yc).sum(-1)
    return cross, sx, sy, kx, ky


def unbiased_from_terms(cross, sx, sy, kx, ky, n: int):
    """Unbiased HSIC (times n(n-3)) from centered-linear-Gram terms.

    For centered data (``K 1 = 0``) the U-statistic of Song et al. (2012) reduces to
    ``<K, L> - n/(n-2) k.l + (sum k)(sum l) / ((n-1)(n-2))`` with ``k = diag K``, ``l = diag L``.
    Returns ``(cross_u [La, Lb], hx [La], hy [Lb])``.
    """
    c1 = n / (n - 2)
    c2 = 1.0 / ((n - 1) * (n - 2))
    skx, sky = kx.sum(-1), ky.sum(-1)
    cross_u = cross - c1 * (kx @ ky.T) + c2 * skx[:, None] * sky[None, :]
    hx = sx - c1 * (kx * kx).sum(-1) + c2 * skx * skx
    hy = sy - c1 * (ky * ky).sum(-1) + c2 * sky * sky
    return cross_u, hx, hy


def _check_positive_self(h: torch.Tensor, name: str, measure: str) -> None:
    bad = (h <= 0).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"{measure}: the HSIC of {name} layer {bad[0]} with itself is {float(h[bad[0]]):.3g}, not > 0 "
            "(a degenerate kernel, e.g. rows that differ only by a constant); CKA is undefined"
        )


def _ratio(cross: torch.Tensor, hx: torch.Tensor, hy: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return (cross / torch.sqrt(hx[:, None] * hy[None, :])).clamp_(lo, hi)


def linear_cka(X: Any, Y: Any, *, route: str = "auto") -> torch.Tensor:
    """Linear CKA with the biased HSIC estimator, all layer pairs (Kornblith et al. 2019).

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on column-centered inputs.

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (float16/bfloat16 upcast to float64 first), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.
        route: ``'auto'`` (by cost), ``'gram'`` (``[n, n]`` Gram matrices) or ``'feature'``
            (``[da, db]`` cross-covariances); the value is the same up to ~1e-12.

    Returns:
        ``[La, Lb]`` float64 on X's device, in [0, 1]; 1 = identical up to rotation, isotropic scaling
        and translation. Invariant to orthogonal maps, isotropic scaling, translation, feature permutation.

    Raises:
        ValueError: non-finite values, row counts that differ, n < 2, a layer with zero variance, bad route.
    """
    _, _, Xc, Yc = prepare_pair(X, Y, "linear_cka", min_n=2, why="centering needs two rows")
    cross, sx, sy, _, _ = _linear_terms(Xc, Yc, route)
    return _ratio(cross, sx, sy, 0.0, 1.0)


def debiased_cka(X: Any, Y: Any, *, route: str = "auto") -> torch.Tensor:
    """Linear CKA with the unbiased HSIC estimator (Song et al. 2012), all layer pairs.

    Removes the upward bias of :func:`linear_cka` at small n / large d: on independent data the value is
    centred on 0. Can be slightly negative.

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64 first), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.
        route: ``'auto'``, ``'gram'`` or ``'feature'`` (same value up to ~1e-12).

    Returns:
        ``[La, Lb]`` float64 on X's device, in [-1, 1].

    Raises:
        ValueError: non-finite values, row counts that differ, n < 4 (the estimator divides by n-3),
            a layer with zero variance, a degenerate kernel, bad route.
    """
    _, _, Xc, Yc = prepare_pair(X, Y, "debiased_cka", min_n=4, why="the unbiased HSIC estimator divides by n-3")
    n = Xc.shape[1]
    cross, sx, sy, kx, ky = _linear_terms(Xc, Yc, route)
    cross_u, hx, hy = unbiased_from_terms(cross, sx, sy, kx, ky, n)
    _check_positive_self(hx, "X", "debiased_cka")
    _check_positive_self(hy, "Y", "debiased_cka")
    return _ratio(cross_u, hx, hy, -1.0, 1.0)


def rbf_kernels(Xs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Gaussian kernel Grams ``exp(-||x_i - x_j||^2 / (2 sigma^2))``, ``sigma = threshold * median distance``.

    The median is taken over the full ``[n, n]`` matrix of pairwise distances (zero diagonal included),
    as in Kornblith et al.'s reference code. ``[L, n, d] -> [L, n, n]``.

    Raises:
        ValueError: a layer whose median pairwise distance is 0 (most rows identical).
    """
    D = la.sq_distances(Xs)
    med = la.median_lastdims(D)
    bad = (med <= 0).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"rbf_cka: layer {bad[0]} has median pairwise distance 0 (most rows are identical), so the "
            "bandwidth threshold * median distance is 0"
        )
    sigma2 = (threshold**2) * med
    return torch.exp(-D / (2 * sigma2[:, None, None]))


def rbf_cka(X: Any, Y: Any, *, threshold: float = 1.0, debiased: bool = False) -> torch.Tensor:
    """CKA with a Gaussian (RBF) kernel, all layer pairs (Kornblith et al. 2019).

    Bandwidth ``sigma = threshold * median pairwise Euclidean distance`` per layer (median over the
    full distance matrix, zero diagonal included, as in the reference code).

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64 first), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.
        threshold: bandwidth multiplier (> 0). Small values emphasise local neighbourhoods.
        debiased: use the unbiased HSIC estimator (U-centering, n >= 4) instead of the biased one.

    Returns:
        ``[La, Lb]`` float64 on X's device; in [0, 1] (biased) or [-1, 1] (debiased). Memory
        ``O((La + Lb) n^2)``.

    Raises:
        ValueError: non-finite values, row counts that differ, n too small, a constant layer,
            threshold <= 0, a zero median distance.
    """
    check_option_positive(threshold, "threshold", "rbf_cka")
    min_n = 4 if debiased else 2
    Xs, Ys, _, _ = prepare_pair(
        X,
        Y,
        "rbf_cka",
        min_n=min_n,
        why="the unbiased HSIC estimator divides by n-3" if debiased else "centering needs two rows",
    )
    Km, Lm = rbf_centered(Xs, threshold, debiased), rbf_centered(Ys, threshold, debiased)
    cross, hx, hy = la.flat_inner(Km, Lm), la.self_inner(Km), la.self_inner(Lm)
    _check_positive_self(hx, "X", "rbf_cka")
    _check_positive_self(hy, "Y", "rbf_cka")
    return _ratio(cross, hx, hy, -1.0 if debiased else 0.0, 1.0)


def rbf_centered(Xs: torch.Tensor, threshold: float, debiased: bool) -> torch.Tensor:
    """Centered (or U-centered) RBF Gram stack ``[L, n, n]`` of a validated stack."""
    K = rbf_kernels(Xs, threshold)
    return la.u_center(K) if debiased else la.double_center(K)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Split ``range(n)`` into ``ceil(n / batch_size)`` consecutive batches whose sizes differ by at most 1."""
    m = max(1, math.ceil(n / batch_size))
    base, extra = divmod(n, m)
    out, start = [], 0
    for i in range(m):
        size = base + (1 if i < extra else 0)
        out.append(slice(start, start + size))
        start += size
    return out


def minibatch_hsic_terms(Xb: torch.Tensor, Yb: torch.Tensor, debiased: bool):
    """HSIC terms of one minibatch (already validated float64 stacks ``[L, m, d]``).

    Returns ``(cross [La, Lb], hx [La], hy [Lb])`` normalised per batch (divided by ``m(m-3)`` for the
    unbiased estimator, by ``(m-1)^2`` for the biased one), so that sums over batches are the
    accumulated HSIC of Nguyen et al. (2021).
    """
    m = Xb.shape[1]
    Xc, Yc = la.center(Xb), la.center(Yb)
    cross, sx, sy, kx, ky = _linear_terms(Xc, Yc, "auto")
    if debiased:
        cross, sx, sy = unbiased_from_terms(cross, sx, sy, kx, ky, m)
        scale = 1.0 / (m * (m - 3))
    else:
        scale = 1.0 / ((m - 1) ** 2)
    return cross * scale, sx * scale, sy * scale


def minibatch_cka(X: Any, Y: Any, *, batch_size: int = 256, debiased: bool = True) -> torch.Tensor:
    """Minibatch linear CKA (Nguyen, Raghu & Kornblith 2021), all layer pairs.

    Rows are split into ``ceil(n / batch_size)`` consecutive batches of near-equal size (sizes differ by
    at most one). Per batch the HSIC terms are computed (unbiased estimator by default, as in the
    paper), summed over batches, and CKA is the ratio of the sums
    ``sum_i HSIC(K_i, L_i) / sqrt(sum_i HSIC(K_i, K_i) * sum_i HSIC(L_i, L_i))`` -- not the mean of
    per-batch CKA values. The value does not depend on the order of the batches. Shuffle rows
    beforehand for random batches. A streaming version is :class:`homoscope.measures.streaming.MinibatchCKA`.

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64 first), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.
        batch_size: target rows per batch (>= 4 for the unbiased estimator, >= 2 otherwise).
        debiased: unbiased HSIC per batch (default) or biased.

    Returns:
        ``[La, Lb]`` float64 on X's device.

    Raises:
        ValueError: non-finite values, row counts that differ, a constant layer, a batch smaller than
            the estimator needs.
    """
    Xs, Ys, _, _ = prepare_pair(
        X,
        Y,
        "minibatch_cka",
        min_n=4 if debiased else 2,
        why="each batch needs 4 rows for the unbiased estimator" if debiased else "each batch needs 2 rows",
    )
    min_batch = 4 if debiased else 2
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < min_batch:
        raise ValueError(f"minibatch_cka: batch_size must be an integer >= {min_batch}; got batch_size={batch_size!r}")
    n = Xs.shape[1]
    slices = batch_slices(n, batch_size)
    smallest = min(s.stop - s.start for s in slices)
    check_min_n(smallest, min_batch, "minibatch_cka batch", "rows per batch for the estimator")
    cross = hx = hy = None
    for s in slices:
        c, x, y = minibatch_hsic_terms(Xs[:, s], Ys[:, s], debiased)
        cross, hx, hy = (c, x, y) if cross is None else (cross + c, hx + x, hy + y)
    _check_positive_self(hx, "X", "minibatch_cka")
    _check_positive_self(hy, "Y", "minibatch_cka")
    return _ratio(cross, hx, hy, -1.0 if debiased else 0.0, 1.0)
