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

Linear-kernel CKA (linear, debiased, minibatch) computes all layer pairs at once through
:mod:`homoscope.measures._hsic`: symmetric ``n x n`` Gram blocks (Gram route) or cross-covariances of
concatenated features (feature route), whichever needs fewer flops. Means are removed in float64 first;
``precision="float32"`` (default) then runs the GEMMs in float32 with float64 accumulation (within about
1e-7 of float64 for any offset or scale of the inputs), ``precision="float64"`` runs them in float64.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _linalg as la
from ._hsic import (  # noqa: F401  (choose_route: public here)
    Centering,
    centering,
    check_precision,
    choose_route,
    column_means,
    even_slices,
    layer_scales,
    lifted,
    linear_terms,
    terms,
    unbiased_from_terms,
)
from ._meta import KORNBLITH_2019, ROTATION_INVARIANT, measure
from ._validate import check_min_n, check_option_positive, prepare_pair, shape_pair

def _terms(X: Any, Y: Any, measure: str, min_n: int, why: str, route: str, precision: str, unbiased: bool = False):
    """Shape-check ``X``, ``Y`` and return their :class:`~homoscope.measures._hsic.Terms` (float64)."""
    Xs, Ys = shape_pair(X, Y)
    check_min_n(Xs.shape[1], min_n, measure, why)
    return linear_terms(Xs, Ys, route=route, precision=precision, measure=measure, unbiased=unbiased)


def _check_positive_self(h: torch.Tensor, name: str, measure: str) -> None:
    bad = (h <= 0).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"{measure}: the HSIC of {name} layer {bad[0]} with itself is {float(h[bad[0]]):.3g}, not > 0 "
            "(a degenerate kernel, e.g. rows that differ only by a constant); CKA is undefined"
        )


def _ratio(cross: torch.Tensor, hx: torch.Tensor, hy: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return (cross / torch.sqrt(hx[:, None] * hy[None, :])).clamp_(lo, hi)


@measure("linear_cka", kind="similarity", symmetric=True, value_range=(0.0, 1.0), invariances=ROTATION_INVARIANT,
         min_n=2, reference=KORNBLITH_2019, description="linear CKA, biased HSIC estimator", family="cka")
def linear_cka(X: Any, Y: Any, *, route: str = "auto", precision: str = "float32") -> torch.Tensor:
    """Linear CKA with the biased HSIC estimator, all layer pairs (Kornblith et al. 2019).

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on column-centered inputs.

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (float16/bfloat16 included), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.
        route: ``'auto'`` (by flops), ``'gram'`` (``[n, n]`` Gram blocks) or ``'feature'``
            (``[da, db]`` cross-covariances); the value is the same up to the precision's rounding.
        precision: ``'float32'`` (default: float32 GEMMs on float64-centered data, float64 accumulation;
            within about 1e-7 of float64; n < 256 or n < d / 2 runs float64 GEMMs) or ``'float64'``
            (about 1e-12).

    Returns:
        ``[La, Lb]`` float64 on X's device, in [0, 1]; 1 = identical up to rotation, isotropic scaling
        and translation. Invariant to orthogonal maps, isotropic scaling, translation, feature permutation.

    Raises:
        ValueError: non-finite values, row counts that differ, n < 2, a layer with zero variance, bad
            route or precision.
    """
    t = _terms(X, Y, "linear_cka", 2, "centering needs two rows", route, precision)
    return _ratio(t.cross, t.sx, t.sy, 0.0, 1.0)


@measure("debiased_cka", kind="similarity", symmetric=True, value_range=(-1.0, 1.0), invariances=ROTATION_INVARIANT,
         min_n=4, reference="Song, Smola, Gretton, Bedo & Borgwardt 2012, Feature Selection via Dependence "
         "Maximization (JMLR); CKA as in " + KORNBLITH_2019,
         description="linear CKA, unbiased HSIC estimator (near 0 for unrelated representations)", family="cka", display_range=(0.0, 1.0))
def debiased_cka(X: Any, Y: Any, *, route: str = "auto", precision: str = "float32") -> torch.Tensor:
    """Linear CKA with the unbiased HSIC estimator (Song et al. 2012), all layer pairs.

    Removes the upward bias of :func:`linear_cka` at small n / large d: on independent data the value is
    centred on 0. Can be slightly negative.

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (float16/bfloat16 included), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.
        route: ``'auto'``, ``'gram'`` or ``'feature'`` (same value up to the precision's rounding).
        precision: ``'float32'`` (default: float32 GEMMs on float64-centered data, float64 accumulation;
            within about 1e-7 of float64; n < 256 or n < d / 2 runs float64 GEMMs) or ``'float64'``
            (about 1e-12).

    Returns:
        ``[La, Lb]`` float64 on X's device, in [-1, 1].

    Raises:
        ValueError: non-finite values, row counts that differ, n < 4 (the estimator divides by n-3),
            a layer with zero variance, a degenerate kernel, bad route or precision.
    """
    t = _terms(X, Y, "debiased_cka", 4, "the unbiased HSIC estimator divides by n-3", route, precision, True)
    cross_u, hx, hy = unbiased_from_terms(t.cross, t.sx, t.sy, t.kx, t.ky, t.kx.shape[1])
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
    D = la.sq_distances(la.center(Xs))  # distances of centered rows: no cancellation of a common offset
    med = la.median_lastdims(D)
    bad = (med <= 0).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"rbf_cka: layer {bad[0]} has median pairwise distance 0 (most rows are identical), so the "
            "bandwidth threshold * median distance is 0"
        )
    sigma2 = (threshold**2) * med
    return torch.exp(-D / (2 * sigma2[:, None, None]))


@measure("rbf_cka", kind="similarity", symmetric=True, value_range=(-1.0, 1.0), invariances=ROTATION_INVARIANT,
         min_n=2, reference=KORNBLITH_2019,
         description="CKA with a Gaussian kernel, bandwidth = threshold x median pairwise distance", family="cka")
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
        center=False,  # rbf_kernels centers (the distances do not depend on it)
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
    return even_slices(n, batch_size)


def _per_batch(cross, sx, sy, kx, ky, m: int, debiased: bool):
    """Normalise one batch's HSIC terms (unbiased: ``/ m(m-3)``, biased: ``/ (m-1)^2``)."""
    if debiased:
        cross, sx, sy = unbiased_from_terms(cross, sx, sy, kx, ky, m)
        scale = 1.0 / (m * (m - 3))
    else:
        scale = 1.0 / ((m - 1) ** 2)
    return cross * scale, sx * scale, sy * scale


def minibatch_hsic_terms(Xb: torch.Tensor, Yb: torch.Tensor, debiased: bool, precision: str = "float32"):
    """HSIC terms of one minibatch of validated (finite, shape-checked) stacks ``[La, m, da]``, ``[Lb, m, db]``.

    Returns ``(cross [La, Lb], hx [La], hy [Lb])`` float64 in the inputs' units, normalised per batch
    (divided by ``m(m-3)`` for the unbiased estimator, by ``(m-1)^2`` for the biased one), so that sums
    over batches are the accumulated HSIC of Nguyen et al. (2021). A layer constant within the batch
    contributes zero.
    """
    check_precision(precision)
    cx = centering(Xb, "X", "minibatch_cka", allow_constant=True)
    cy = centering(Yb, "Y", "minibatch_cka", allow_constant=True)
    t = terms(Xb, cx, Yb, cy, precision, unbiased=debiased)
    # back to the inputs' units: the scales are powers of two, so this is exact
    ux, uy = cx.scale.flatten() ** -2, cy.scale.flatten() ** -2
    cross = t.cross * ux[:, None] * uy[None, :]
    sx, sy, kx, ky = t.sx * ux * ux, t.sy * uy * uy, t.kx * ux[:, None], t.ky * uy[:, None]
    return _per_batch(cross, sx, sy, kx, ky, Xb.shape[1], debiased)


@measure("minibatch_cka", kind="similarity", symmetric=True, value_range=(-1.0, 1.0),
         invariances=ROTATION_INVARIANT, min_n=4,
         reference="Nguyen, Raghu & Kornblith 2021, Do Wide and Deep Networks Learn the Same Things? (ICLR)",
         description="linear CKA from HSIC sums accumulated over minibatches", family="cka")
def minibatch_cka(
    X: Any, Y: Any, *, batch_size: int = 256, debiased: bool = True, precision: str = "float32"
) -> torch.Tensor:
    """Minibatch linear CKA (Nguyen, Raghu & Kornblith 2021), all layer pairs.

    Rows are split into ``ceil(n / batch_size)`` consecutive batches of near-equal size (sizes differ by
    at most one). Per batch the HSIC terms are computed (unbiased estimator by default, as in the
    paper), summed over batches, and CKA is the ratio of the sums
    ``sum_i HSIC(K_i, L_i) / sqrt(sum_i HSIC(K_i, K_i) * sum_i HSIC(L_i, L_i))`` -- not the mean of
    per-batch CKA values. The value does not depend on the order of the batches. Shuffle rows
    beforehand for random batches. A streaming version is :class:`homoscope.measures.streaming.MinibatchCKA`.

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (float16/bfloat16 included), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.
        batch_size: target rows per batch (>= 4 for the unbiased estimator, >= 2 otherwise).
        debiased: unbiased HSIC per batch (default) or biased.
        precision: ``'float32'`` (default: float32 GEMMs on float64-centered batches, float64
            accumulation; batches of < 256 rows or fewer rows than half the width run float64 GEMMs)
            or ``'float64'``.

    Returns:
        ``[La, Lb]`` float64 on X's device.

    Raises:
        ValueError: non-finite values, row counts that differ, a constant layer, a batch smaller than
            the estimator needs, bad precision.
    """
    min_batch = 4 if debiased else 2
    Xs, Ys = shape_pair(X, Y)
    check_min_n(
        Xs.shape[1],
        min_batch,
        "minibatch_cka",
        "each batch needs 4 rows for the unbiased estimator" if debiased else "each batch needs 2 rows",
    )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < min_batch:
        raise ValueError(f"minibatch_cka: batch_size must be an integer >= {min_batch}; got batch_size={batch_size!r}")
    check_precision(precision)
    # checks on the whole stack, and one power-of-two scale per layer shared by every batch (so the
    # per-batch sums are in the same units)
    Xs, Ys = lifted(Xs, "X", "minibatch_cka"), lifted(Ys, "Y", "minibatch_cka")
    sx_, sy_ = layer_scales(Xs, "X", "minibatch_cka"), layer_scales(Ys, "Y", "minibatch_cka")
    n = Xs.shape[1]
    slices = batch_slices(n, batch_size)
    smallest = min(s.stop - s.start for s in slices)
    check_min_n(smallest, min_batch, "minibatch_cka batch", "rows per batch for the estimator")
    cross = hx = hy = None
    for s in slices:
        xb, yb = Xs[:, s], Ys[:, s]
        t = terms(xb, Centering(column_means(xb), sx_), yb, Centering(column_means(yb), sy_), precision,
                  unbiased=debiased)
        c, x, y = _per_batch(*t, s.stop - s.start, debiased)
        cross, hx, hy = (c, x, y) if cross is None else (cross + c, hx + x, hy + y)
    _check_positive_self(hx, "X", "minibatch_cka")
    _check_positive_self(hy, "Y", "minibatch_cka")
    return _ratio(cross, hx, hy, -1.0 if debiased else 0.0, 1.0)
