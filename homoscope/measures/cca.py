"""Canonical correlation analysis (CCA) family, all layer pairs.

Canonical correlations between the column spaces of centered X and Y are the singular values of
``Q_x^T Q_y`` where ``Q`` are orthonormal bases of the centered data (Bjorck & Golub 1973). The
bases are computed once per layer and reused across every layer pair: a well-conditioned layer with
more rows than columns (condition number below ~1e5) gets its basis from the eigendecomposition of its
``d x d`` Gram matrix followed by one Cholesky re-orthonormalisation (GEMM-bound; as accurate as a QR
at that conditioning); any other layer from a thin SVD. Per pair, the mean correlation comes from the
eigenvalues of ``M M^T`` (``M = Q_x^T Q_y``) with a certified error bound, falling back to the singular
values of ``M`` when correlations near zero make the bound too loose. The ``d x d`` factorizations run
one per thread with single-threaded LAPACK.

- :func:`cca_rho`: mean canonical correlation.
- :func:`cca_r2`: mean squared canonical correlation (``||Q_x^T Q_y||_F^2 / min(r_x, r_y)``, no SVD).
- :func:`svcca`: SVD-reduced CCA (Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017, "SVCCA", NeurIPS).
- :func:`pwcca`: projection-weighted CCA (Morcos, Raghu & Bengio 2018, "Insights on representational
  similarity in neural networks with canonical correlation", NeurIPS); asymmetric.

Rules: constant columns are dropped (they carry no variance); the plain CCA measures need more rows
than non-constant columns (n > max(d_x, d_y)); when retained dimensions of a pair sum to n or more,
at least ``r_x + r_y - n + 1`` canonical correlations are forced to 1 and a warning is issued.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from . import _linalg as la
from ._meta import ROTATION_INVARIANT, measure
from ._validate import prepare_pair

CCA_INVARIANT = ROTATION_INVARIANT + ("invertible_linear",)

EPS = torch.finfo(torch.float64).eps
T = TypeVar("T")

# A mean canonical correlation taken from the eigenvalues of ``M M^T`` is kept when its certified error
# bound is below this; the pair's singular values are computed directly otherwise.
MEAN_RHO_ATOL = 1e-11


# Layers whose Gram matrix has every eigenvalue of a non-constant direction above this fraction of
# the largest (condition number below ~1e5) take the Gram route in :func:`layer_bases`; any other
# layer (rank-deficient, ill-conditioned or wide) is decomposed by a thin SVD instead.
GRAM_ROUTE_RTOL = 1e-10


@dataclass
class Bases:
    """Per-layer orthonormal bases of the centered data.

    Attributes:
        U: ``[L, n, k]`` orthonormal columns spanning the centered column space, ordered by decreasing
            singular value (the leading ``j`` columns span the top-``j`` left singular subspace); columns
            at or beyond a layer's kept rank are zero.
        S: ``[L, k]`` singular values (descending); entries beyond the kept rank are zero.
        C: ``[L, k, d]`` coordinates of the centered columns in the basis, ``U^T Xc`` (rows beyond the
            kept rank zero).
        rank: ``[L]`` kept rank per layer (numerical rank, or the SVCCA truncation).
        d_eff: ``[L]`` number of non-constant columns per layer.
    """

    U: torch.Tensor
    S: torch.Tensor
    C: torch.Tensor
    rank: torch.Tensor
    d_eff: torch.Tensor


def _parallel_map(fn: Callable[[int], T], items: Sequence[int], device: torch.device) -> list[T]:
    """``[fn(i) for i in items]``, on CPU spread over ``torch.get_num_threads()`` worker threads that
    each run their LAPACK/BLAS calls single-threaded.

    The tasks here are ``d x d`` factorizations; multithreaded LAPACK parallelises their level-2 parts
    poorly and, on a loaded machine, spins at its barriers (a 768 x 768 ``svdvals`` was seen to take 10-30x
    longer with 2 threads than with 1). One task per thread avoids both. The thread count is restored.
    """
    items = list(items)
    workers = min(len(items), torch.get_num_threads())
    if device.type != "cpu" or workers <= 1:
        return [fn(i) for i in items]
    prev = torch.get_num_threads()

    def run(i: int) -> T:
        torch.set_num_threads(1)
        return fn(i)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(run, items))
    finally:
        torch.set_num_threads(prev)


def _constant_columns(Xc: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``[L, d]`` mask of the (numerically) constant columns of a centered stack."""
    spread = torch.linalg.vector_norm(Xc, dim=1)
    scale = torch.linalg.vector_norm(X, dim=1)
    return spread <= 64 * EPS * scale


def _svd_basis(Xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of one layer ``[n, d]``: basis, singular values, coordinates, numerical rank.

    Numerical rank: singular values above ``max(n, d) * eps * s_max`` (the numpy ``matrix_rank`` rule).
    """
    U, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
    keep = S > max(Xc.shape) * EPS * S[:1]
    k = keep.to(S.dtype)
    return U * k, S * k, (S * k)[:, None] * Vh, keep.sum()


def _gram_basis(Xc: torch.Tensor, const: torch.Tensor, d_eff: int):
    """Basis of one layer ``[n, d]`` from its Gram matrix, or None when the layer is not clearly of full
    rank ``d_eff`` (then the caller uses the SVD).

    ``Xc^T Xc = V diag(s^2) V^T`` gives the right singular vectors; ``Xc V diag(1/s)`` is re-orthonormalised
    by one Cholesky QR pass (which keeps the span of every leading block of columns, so the columns stay
    ordered by singular value). Four GEMMs over the rows ``[n, d]`` plus ``d x d`` factorizations.
    """
    n, d = Xc.shape
    if d_eff > n - 1:
        return None
    keep = ~const
    G = Xc.T @ Xc
    G = G * (keep[:, None] & keep[None, :])
    lam, V = torch.linalg.eigh(G)
    lam, V = lam.flip(0), V.flip(1)
    if not bool(lam[d_eff - 1] > GRAM_ROUTE_RTOL * lam[0]):
        return None
    live = torch.arange(d, device=Xc.device) < d_eff
    s = torch.where(live, lam.clamp(min=0.0).sqrt(), 0.0)
    W = V * torch.where(live, 1.0 / s.clamp(min=torch.finfo(s.dtype).tiny), 0.0)
    W = W * keep[:, None]  # constant columns contribute nothing
    Q = Xc @ W
    G2 = Q.T @ Q + torch.diag((~live).to(Q.dtype))
    R, info = torch.linalg.cholesky_ex(G2, upper=True)
    if int(info) != 0:
        return None
    Q = torch.linalg.solve_triangular(R, Q, upper=True, left=False)
    # Xc = Q R diag(s) V^T, so the coordinates U^T Xc need no pass over the rows
    C = (R @ (s[:, None] * V.T)) * keep[None, :]
    return Q, s, C, torch.tensor(d_eff, device=Xc.device)


def layer_bases(Xc: torch.Tensor, X: torch.Tensor) -> Bases:
    """Orthonormal bases of the centered column space of each layer (constant columns dropped).

    A layer that is clearly of full rank (every non-constant direction's squared singular value above
    ``GRAM_ROUTE_RTOL`` of the largest) and not wide gets its basis from the ``d x d`` Gram matrix (one
    eigendecomposition and a Cholesky re-orthonormalisation, GEMM-bound); any other layer from a thin SVD
    with the numpy ``matrix_rank`` rule (singular values above ``max(n, d) * eps * s_max``).
    """
    L, n, d = Xc.shape
    const = _constant_columns(Xc, X)
    d_eff = (~const).sum(dim=1)
    k = min(n, d)
    U = Xc.new_zeros(L, n, k)
    S = Xc.new_zeros(L, k)
    C = Xc.new_zeros(L, k, d)
    rank = torch.zeros(L, dtype=torch.long, device=Xc.device)
    d_eff_list = d_eff.tolist()

    def one(l: int) -> None:
        out = _gram_basis(Xc[l], const[l], d_eff_list[l])
        if out is None:
            out = _svd_basis(Xc[l].masked_fill(const[l][None, :], 0.0))
        q, s, c, r = out
        U[l] = q[:, :k]
        S[l] = s[:k]
        C[l] = c[:k]
        rank[l] = r

    _parallel_map(one, range(L), Xc.device)
    return _compact(Bases(U, S, C, rank, d_eff))


def _compact(b: Bases) -> Bases:
    """Drop the trailing basis columns that are zero in every layer."""
    k = max(1, int(b.rank.max()))
    if k == b.S.shape[1]:
        return b
    return Bases(b.U[:, :, :k], b.S[:, :k], b.C[:, :k], b.rank, b.d_eff)


def _truncate(b: Bases, keep: torch.Tensor) -> Bases:
    k = keep.to(b.S.dtype)
    return _compact(Bases(b.U * k[:, None, :], b.S * k, b.C * k[:, :, None], keep.sum(dim=1), b.d_eff))


def svcca_truncate(b: Bases, variance_kept: float) -> Bases:
    """Keep, per layer, the fewest top singular directions whose squared singular values reach
    ``variance_kept`` of the total (at least one)."""
    s2 = b.S * b.S
    frac = s2.cumsum(dim=1) / s2.sum(dim=1, keepdim=True)
    # number of directions needed: first index where the cumulative fraction reaches the target
    need = (frac < variance_kept - 1e-12).sum(dim=1) + 1
    need = torch.minimum(need, b.rank).clamp(min=1)
    idx = torch.arange(b.S.shape[1], device=b.S.device)
    keep = idx[None, :] < need[:, None]
    return _truncate(b, keep)


ROWS_ABOVE_WIDTH = ("cca_rho", "cca_r2", "pwcca")
"""The measures that refuse ``n <= max(d_x, d_y)`` (:func:`_check_n_vs_d`); svcca keeps at most n - 1 directions."""


def _check_n_vs_d(n: int, bx: Bases, by: Bases, measure: str) -> None:
    for name, b in (("X", bx), ("Y", by)):
        d = int(b.d_eff.max())
        if n <= d:
            raise ValueError(
                f"{measure} needs more rows than non-constant columns (n > max(d_x, d_y)): "
                f"n={n} <= d_{name.lower()}={d}; canonical correlations would be forced to 1. "
                "Use more rows, or svcca to reduce dimensions first"
            )


def _warn_forced(n: int, rx: torch.Tensor, ry: torch.Tensor, measure: str) -> None:
    tot = rx[:, None] + ry[None, :]
    if bool((tot >= n).any()):
        worst = int(tot.max())
        warnings.warn(
            f"{measure}: retained dimensions sum to {worst} >= n={n} for some layer pairs; at least "
            f"{worst - n + 1} canonical correlation(s) are forced to 1 there. Use more rows or fewer dimensions",
            RuntimeWarning,
            stacklevel=3,
        )


def _pair_count(rx: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
    return torch.minimum(rx[:, None], ry[None, :]).to(torch.float64)


def _pair_tasks(La: int, Lb: int, per_pair_bytes: int, device: torch.device) -> list[tuple[int, int, int]]:
    """Split the layer pairs into ``(a, b0, b1)`` blocks: one X layer against a block of Y layers, small
    enough for the working-memory budget and, on CPU, numerous enough to share among the threads."""
    step = max(1, min(Lb, la.CHUNK_BYTES // max(per_pair_bytes, 1)))
    if device.type == "cpu":
        step = min(step, max(1, -(-Lb // 2)))
    return [(a, b0, min(Lb, b0 + step)) for a in range(La) for b0 in range(0, Lb, step)]


def _sum_correlations(M: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Sum of the ``m`` largest singular values of each ``M [B, p, q]`` (``m [B]``; all in [0, 1]).

    The squared singular values are the eigenvalues of the smaller Gram ``M M^T`` or ``M^T M`` (a
    symmetric eigensolve, about half the cost of an SVD). A computed eigenvalue has an absolute error of
    at most ``delta = p * eps * ||M||^2`` (a generous bound: a few eps is typical), so its square root is
    off by at most ``min(sqrt(delta), delta / sigma)``. Pairs whose bound on the mean exceeds
    ``MEAN_RHO_ATOL`` (some correlations close to zero) are recomputed with ``svdvals``.
    """
    p, q = M.shape[-2:]
    A = M @ M.mT if p <= q else M.mT @ M
    lam = torch.linalg.eigvalsh(A).flip(-1)
    k = lam.shape[-1]
    live = torch.arange(k, device=M.device)[None, :] < m[:, None]
    sig = lam.clamp(min=0.0).sqrt().clamp_(max=1.0)
    delta = k * EPS * lam[:, :1].clamp(min=1.0)
    err = torch.minimum(delta.sqrt(), delta / sig.clamp(min=torch.finfo(sig.dtype).tiny))
    bound = (err * live).sum(dim=-1) / m.clamp(min=1)
    total = (sig * live).sum(dim=-1)
    redo = (bound > MEAN_RHO_ATOL).nonzero().flatten()
    if redo.numel():
        s = torch.linalg.svdvals(M[redo]).clamp_(0.0, 1.0)
        total[redo] = (s * live[redo, : s.shape[-1]]).sum(dim=-1)
    return total


def mean_correlations(bx: Bases, by: Bases) -> torch.Tensor:
    """Mean canonical correlation ``(1/m) sum_i rho_i`` (``m = min(r_a, r_b)``) for all layer pairs,
    ``[La, Lb]``; the correlations are the singular values of ``U_a^T U_b``."""
    La, n, kx = bx.U.shape
    Lb, _, ky = by.U.shape
    count = torch.minimum(bx.rank[:, None], by.rank[None, :])
    out = bx.U.new_zeros(La, Lb)
    Ub = by.U.permute(1, 0, 2).reshape(n, Lb * ky)  # [n, Lb*ky]

    def one(task: tuple[int, int, int]) -> None:
        a, b0, b1 = task
        M = (bx.U[a].T @ Ub[:, b0 * ky : b1 * ky]).reshape(kx, b1 - b0, ky).transpose(0, 1)
        out[a, b0:b1] = _sum_correlations(M, count[a, b0:b1])

    _parallel_map(one, _pair_tasks(La, Lb, 3 * kx * ky * 8, bx.U.device), bx.U.device)
    return (out / count.clamp(min=1).to(out.dtype)).clamp_(0.0, 1.0)


def _prepare(X: Any, Y: Any, measure: str):
    Xs, Ys, Xc, Yc = prepare_pair(X, Y, measure, min_n=2, why="centering needs two rows")
    return Xs, Ys, layer_bases(Xc, Xs), layer_bases(Yc, Ys)


@measure("cca_rho", kind="similarity", symmetric=True, value_range=(0.0, 1.0), invariances=CCA_INVARIANT, min_n=2,
         reference="Hotelling 1936, Relations Between Two Sets of Variates (Biometrika); as used by Raghu et al. 2017",
         description="mean canonical correlation (needs n > d)", family="cca")
def cca_rho(X: Any, Y: Any) -> torch.Tensor:
    """Mean canonical correlation for all layer pairs.

    ``rho = (1/m) sum_i rho_i``, ``m = min(r_x, r_y)`` canonical correlations of the centered data
    (r = numerical rank after dropping constant columns).

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.

    Returns:
        ``[La, Lb]`` float64 in [0, 1]. Invariant to any invertible linear map of either side (at full
        column rank), translation and feature permutation.

    Raises:
        ValueError: non-finite values, row counts that differ, a constant layer, n <= max(d_x, d_y)
            (non-constant columns).

    Warns:
        RuntimeWarning: when ``r_x + r_y >= n`` for some pair (correlations forced to 1).
    """
    Xs, _, bx, by = _prepare(X, Y, "cca_rho")
    n = Xs.shape[1]
    _check_n_vs_d(n, bx, by, "cca_rho")
    _warn_forced(n, bx.rank, by.rank, "cca_rho")
    return mean_correlations(bx, by)


@measure("cca_r2", kind="similarity", symmetric=True, value_range=(0.0, 1.0), invariances=CCA_INVARIANT, min_n=2,
         reference="Hotelling 1936; mean squared canonical correlation (Kornblith et al. 2019, R^2_CCA)",
         description="mean squared canonical correlation (needs n > d)", family="cca")
def cca_r2(X: Any, Y: Any) -> torch.Tensor:
    """Mean squared canonical correlation for all layer pairs.

    ``R2 = (1/m) sum_i rho_i^2 = ||Q_x^T Q_y||_F^2 / min(r_x, r_y)``; needs no per-pair SVD (one GEMM of
    the concatenated bases). With ``r_y <= r_x`` it is the average R^2 of regressing Y's whitened
    directions on X.

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.

    Returns:
        ``[La, Lb]`` float64 in [0, 1]. Invariances as :func:`cca_rho`.

    Raises:
        ValueError: as :func:`cca_rho`.

    Warns:
        RuntimeWarning: when ``r_x + r_y >= n`` for some pair.
    """
    Xs, _, bx, by = _prepare(X, Y, "cca_r2")
    n = Xs.shape[1]
    _check_n_vs_d(n, bx, by, "cca_r2")
    _warn_forced(n, bx.rank, by.rank, "cca_r2")
    return (la.cross_sqnorms(bx.U, by.U) / _pair_count(bx.rank, by.rank)).clamp_(0.0, 1.0)


@measure("svcca", kind="similarity", symmetric=True, value_range=(0.0, 1.0), invariances=ROTATION_INVARIANT, min_n=2,
         reference="Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017, SVCCA: Singular Vector Canonical Correlation "
         "Analysis for Deep Learning Dynamics and Interpretability (NeurIPS)",
         description="mean canonical correlation after keeping the top singular directions holding 99% of the variance",
         family="cca")
def svcca(X: Any, Y: Any, *, variance_kept: float = 0.99) -> torch.Tensor:
    """SVCCA (Raghu et al. 2017) for all layer pairs.

    Per layer, keep the fewest top singular directions of the centered data whose squared singular
    values reach ``variance_kept`` of the total (at least one), then return the mean canonical
    correlation between the reduced representations.

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.
        variance_kept: fraction of variance kept, in (0, 1]; 1.0 keeps the full rank (plain CCA).

    Returns:
        ``[La, Lb]`` float64 in [0, 1]. Invariant to orthogonal maps, isotropic scaling, translation and
        feature permutation; with ``variance_kept=1`` to any invertible linear map.

    Raises:
        ValueError: non-finite values, row counts that differ, a constant layer, ``variance_kept``
            outside (0, 1]. (Wide layers are fine: at most n - 1 directions can be kept.)

    Warns:
        RuntimeWarning: when kept dimensions of a pair sum to n or more.
    """
    if not isinstance(variance_kept, (int, float)) or not 0.0 < float(variance_kept) <= 1.0:
        raise ValueError(f"svcca: variance_kept must be in (0, 1]; got variance_kept={variance_kept!r}")
    Xs, _, bx, by = _prepare(X, Y, "svcca")
    n = Xs.shape[1]
    bx, by = svcca_truncate(bx, float(variance_kept)), svcca_truncate(by, float(variance_kept))
    _warn_forced(n, bx.rank, by.rank, "svcca")
    return mean_correlations(bx, by)


def _left_singular(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and singular values of each ``M [c, p, q]``, ``([c, p, m], [c, m])``.

    LAPACK's divide-and-conquer SVD can fail to converge on matrices with many repeated singular values
    (e.g. canonical correlations forced to 1 when ``r_x + r_y >= n``); such a matrix falls back to the
    eigendecomposition of ``M M^T``.
    """
    try:
        P, s, _ = torch.linalg.svd(M, full_matrices=False)
        return P, s
    except torch.linalg.LinAlgError:
        pass
    m = min(M.shape[-2:])
    Ps, ss = [], []
    for A in M:
        try:
            P, s, _ = torch.linalg.svd(A, full_matrices=False)
        except torch.linalg.LinAlgError:
            lam, V = torch.linalg.eigh(A @ A.T)
            P, s = V.flip(-1)[:, :m], lam.flip(-1)[:m].clamp(min=0.0).sqrt()
        Ps.append(P)
        ss.append(s)
    return torch.stack(Ps), torch.stack(ss)


def pwcca_from_bases(bx: Bases, by: Bases) -> torch.Tensor:
    """PWCCA with weights from the X side, from per-layer bases. Returns ``[La, Lb]``."""
    La, n, kx = bx.U.shape
    Lb, _, ky = by.U.shape
    dx = bx.C.shape[-1]
    m = min(kx, ky)
    count = torch.minimum(bx.rank[:, None], by.rank[None, :])  # [La, Lb]
    out = bx.U.new_zeros(La, Lb)
    Ub = by.U.permute(1, 0, 2).reshape(n, Lb * ky)

    def one(task: tuple[int, int, int]) -> None:
        a, b0, b1 = task
        M = (bx.U[a].T @ Ub[:, b0 * ky : b1 * ky]).reshape(kx, b1 - b0, ky).transpose(0, 1)
        P, rho = _left_singular(M)  # P [c, kx, m]
        rho = rho.clamp(0.0, 1.0)
        # |<h_i, x_j>| with h_i = U P_i the X-side canonical variates (unit norm) and x_j the centered
        # columns; bx.C = U^T Xc holds the columns in basis coordinates
        proj = (P.mT @ bx.C[a]).abs().sum(dim=-1)  # [c, m]
        w = proj * (torch.arange(m, device=M.device)[None, :] < count[a, b0:b1, None])
        w = w / w.sum(dim=-1, keepdim=True)
        out[a, b0:b1] = (w * rho).sum(dim=-1)

    per_pair = (kx * ky + kx * m + ky * m + m * dx) * 8 * 2
    _parallel_map(one, _pair_tasks(La, Lb, per_pair, bx.U.device), bx.U.device)
    return out.clamp_(0.0, 1.0)


@measure("pwcca", kind="similarity", symmetric=False, value_range=(0.0, 1.0),
         invariances=("translation", "isotropic_scaling", "permutation"), min_n=2,
         reference="Morcos, Raghu & Bengio 2018, Insights on representational similarity in neural networks with "
         "canonical correlation (NeurIPS)",
         description="projection-weighted mean canonical correlation, weights from X (the first argument) unless "
         "weights_from='y'", family="cca")
def pwcca(X: Any, Y: Any, *, weights_from: str = "x") -> torch.Tensor:
    """Projection-weighted CCA (Morcos et al. 2018) for all layer pairs; asymmetric.

    ``PWCCA = sum_i alpha_i rho_i`` with ``alpha_i`` proportional to ``sum_j |<h_i, z_j>|``: how much the
    i-th canonical variate ``h_i`` of the weighting side accounts for that side's centered neuron
    columns ``z_j``. Weights come from the side named by ``weights_from``; call with ``'x'`` and ``'y'``
    (or swap the arguments) to report both directions.

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.
        weights_from: ``'x'`` (default) or ``'y'``.

    Returns:
        ``[La, Lb]`` float64 in [0, 1]. Invariant to translation, isotropic scaling and feature
        permutation, and to any invertible linear map of the non-weighting side.

    Raises:
        ValueError: as :func:`cca_rho`, or ``weights_from`` not ``'x'``/``'y'``.

    Warns:
        RuntimeWarning: when ``r_x + r_y >= n`` for some pair.
    """
    if weights_from not in ("x", "y"):
        raise ValueError(f"pwcca: weights_from must be 'x' or 'y'; got weights_from={weights_from!r}")
    Xs, _, bx, by = _prepare(X, Y, "pwcca")
    n = Xs.shape[1]
    _check_n_vs_d(n, bx, by, "pwcca")
    _warn_forced(n, bx.rank, by.rank, "pwcca")
    if weights_from == "x":
        return pwcca_from_bases(bx, by)
    return pwcca_from_bases(by, bx).T.contiguous()
