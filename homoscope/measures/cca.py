"""Canonical correlation analysis (CCA) family, all layer pairs.

Canonical correlations between the column spaces of centered X and Y are the singular values of
``Q_x^T Q_y`` where ``Q`` are orthonormal bases of the centered data (Bjorck & Golub 1973). The
bases come from one thin SVD per layer, computed once and reused across every layer pair; no
covariance matrix is formed and no inverse square root is taken.

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
from dataclasses import dataclass
from typing import Any

import torch

from . import _linalg as la
from ._validate import prepare_pair

EPS = torch.finfo(torch.float64).eps


@dataclass
class Bases:
    """Per-layer thin SVD of centered data, ``Xc = U diag(S) Vh``.

    Attributes:
        U: ``[L, n, k]`` left singular vectors; columns at or beyond a layer's kept rank are zero.
        S: ``[L, k]`` singular values (descending); entries beyond the kept rank are zero.
        Vh: ``[L, k, d]`` right singular vectors (rows beyond the kept rank zero).
        rank: ``[L]`` kept rank per layer (numerical rank, or the SVCCA truncation).
        d_eff: ``[L]`` number of non-constant columns per layer.
    """

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor
    rank: torch.Tensor
    d_eff: torch.Tensor


def _drop_constant_columns(Xc: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the (numerically) constant columns of a centered stack; return it and the count kept per layer."""
    spread = torch.linalg.vector_norm(Xc, dim=1)
    scale = torch.linalg.vector_norm(X, dim=1)
    const = spread <= 64 * EPS * scale
    Xc = Xc.masked_fill(const.unsqueeze(1), 0.0)
    return Xc, (~const).sum(dim=1)


def layer_bases(Xc: torch.Tensor, X: torch.Tensor) -> Bases:
    """Orthonormal bases of the centered column space of each layer (constant columns dropped).

    Numerical rank: singular values above ``max(n, d) * eps * s_max`` (the numpy ``matrix_rank`` rule).
    """
    Xc, d_eff = _drop_constant_columns(Xc, X)
    U, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
    n, d = Xc.shape[1], Xc.shape[2]
    tol = max(n, d) * EPS * S[:, :1]
    keep = S > tol
    rank = keep.sum(dim=1)
    return _truncate(Bases(U, S, Vh, rank, d_eff), keep)


def _truncate(b: Bases, keep: torch.Tensor) -> Bases:
    k = keep.to(b.S.dtype)
    return Bases(b.U * k[:, None, :], b.S * k, b.Vh * k[:, :, None], keep.sum(dim=1), b.d_eff)


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


def _chunk_rows(La: int, per_a_bytes: int) -> int:
    return max(1, min(La, la.CHUNK_BYTES // max(per_a_bytes, 1)))


def canonical_correlations(bx: Bases, by: Bases) -> torch.Tensor:
    """Singular values of ``U_a^T U_b`` for all layer pairs: ``[La, Lb, min(kx, ky)]`` in [0, 1].

    Only the first ``min(r_a, r_b)`` entries of a pair are canonical correlations; the rest are zero.
    Computed in chunks of X layers; one batched SVD per chunk.
    """
    La, n, kx = bx.U.shape
    Lb, _, ky = by.U.shape
    step = _chunk_rows(La, Lb * kx * ky * 8 * 3)
    out = []
    for a0 in range(0, La, step):
        M = torch.einsum("anp,bnq->abpq", bx.U[a0 : a0 + step], by.U)
        out.append(torch.linalg.svdvals(M).clamp_(0.0, 1.0))
    return torch.cat(out, dim=0)


def _prepare(X: Any, Y: Any, measure: str):
    Xs, Ys, Xc, Yc = prepare_pair(X, Y, measure, min_n=2, why="centering needs two rows")
    return Xs, Ys, layer_bases(Xc, Xs), layer_bases(Yc, Ys)


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
    rho = canonical_correlations(bx, by)
    return (rho.sum(dim=-1) / _pair_count(bx.rank, by.rank)).clamp_(0.0, 1.0)


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
    rho = canonical_correlations(bx, by)
    return (rho.sum(dim=-1) / _pair_count(bx.rank, by.rank)).clamp_(0.0, 1.0)


def pwcca_from_bases(bx: Bases, by: Bases) -> torch.Tensor:
    """PWCCA with weights from the X side, from per-layer bases. Returns ``[La, Lb]``."""
    La, n, kx = bx.U.shape
    Lb, _, ky = by.U.shape
    dx = bx.Vh.shape[-1]
    m = min(kx, ky)
    SVh = bx.S[:, :, None] * bx.Vh  # [La, kx, dx] = U^T Xc (columns of X in basis coordinates)
    step = _chunk_rows(La, Lb * (kx * ky + kx * m + m * dx) * 8 * 2)
    count = torch.minimum(bx.rank[:, None], by.rank[None, :])  # [La, Lb]
    out = []
    for a0 in range(0, La, step):
        a1 = min(La, a0 + step)
        M = torch.einsum("anp,bnq->abpq", bx.U[a0:a1], by.U)
        P, rho, _ = torch.linalg.svd(M, full_matrices=False)  # P [c, Lb, kx, m]
        rho = rho.clamp(0.0, 1.0)
        # |<h_i, x_j>| with h_i = U P_i the X-side canonical variates (unit norm) and x_j the centered columns
        proj = torch.einsum("abpi,apj->abij", P, SVh[a0:a1]).abs().sum(dim=-1)  # [c, Lb, m]
        valid = torch.arange(m, device=M.device)[None, None, :] < count[a0:a1, :, None]
        w = proj * valid
        w = w / w.sum(dim=-1, keepdim=True)
        out.append((w * rho).sum(dim=-1))
    return torch.cat(out, dim=0).clamp_(0.0, 1.0)


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
