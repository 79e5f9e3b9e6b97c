"""Representational similarity analysis (Kriegeskorte, Mur & Bandettini 2008, "Representational
similarity analysis - connecting the branches of systems neuroscience", Front. Syst. Neurosci.).

Each layer is summarised by its representational dissimilarity matrix (RDM): the correlation distance
``1 - pearson(x_i, x_j)`` between the activity patterns (rows) of every pair of units. Two RDMs are
compared by the Spearman correlation of their upper triangles (ties get average ranks, as in
``scipy.stats.spearmanr``). All layer pairs are one GEMM of standardised rank vectors.
Cost and memory are ``O(L n^2)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._meta import measure
from ._validate import prepare_pair

EPS = torch.finfo(torch.float64).eps


def correlation_rdms(Xs: torch.Tensor, name: str = "X") -> torch.Tensor:
    """Correlation-distance RDMs ``[L, n, d] -> [L, n, n]`` (zero diagonal, values in [0, 2]).

    Raises:
        ValueError: a row that is constant across features (its correlation is undefined).
    """
    Z = Xs - Xs.mean(dim=-1, keepdim=True)
    norms = torch.linalg.vector_norm(Z, dim=-1)
    scale = torch.linalg.vector_norm(Xs, dim=-1)
    bad = norms <= 64 * EPS * scale.clamp(min=torch.finfo(torch.float64).tiny)
    if bool(bad.any()):
        layer, row = bad.nonzero()[0].tolist()
        raise ValueError(
            f"rsa: {name} layer {layer} has {int(bad[layer].sum())} row(s) that are constant across features "
            f"(first: row {row}); the correlation distance of a constant pattern is undefined"
        )
    Z = Z / norms[..., None]
    D = (1.0 - Z @ Z.transpose(1, 2)).clamp_(0.0, 2.0)
    D.diagonal(dim1=-2, dim2=-1).zero_()
    return D


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based) along the last axis of ``[L, N]``, ties given their average rank."""
    L, N = v.shape
    sv, order = torch.sort(v, dim=1, stable=True)
    new_group = torch.ones_like(sv, dtype=torch.bool)
    new_group[:, 1:] = sv[:, 1:] != sv[:, :-1]
    gid = new_group.cumsum(dim=1) - 1  # group index within the row
    gid = gid + torch.arange(L, device=v.device)[:, None] * N
    pos = torch.arange(1, N + 1, dtype=torch.float64, device=v.device).expand(L, N)
    sums = torch.zeros(L * N, dtype=torch.float64, device=v.device).scatter_add_(0, gid.flatten(), pos.flatten())
    cnt = torch.zeros(L * N, dtype=torch.float64, device=v.device).scatter_add_(
        0, gid.flatten(), torch.ones(L * N, dtype=torch.float64, device=v.device)
    )
    mean_rank = (sums / cnt.clamp(min=1))[gid.flatten()].view(L, N)
    ranks = torch.empty_like(mean_rank)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def rank_vectors(Xs: torch.Tensor, name: str = "X", ids: torch.Tensor | None = None) -> torch.Tensor:
    """Upper-triangle RDM ranks ``[L, N]`` (``N = n(n-1)/2``), centered and scaled to unit norm.

    ``rsa(X, Y)[a, b]`` is the inner product of rows ``a`` and ``b`` of these. With ``ids`` (``[n]``
    unit ids, as in a bootstrap resample that repeats units) pairs of rows with the same id are left
    out, like the diagonal.

    Raises:
        ValueError: constant rows, or an RDM whose entries are all equal.
    """
    n = Xs.shape[1]
    D = correlation_rdms(Xs, name)
    iu = torch.triu_indices(n, n, offset=1, device=Xs.device)
    if ids is not None:
        iu = iu[:, ids[iu[0]] != ids[iu[1]]]
    r = average_ranks(D[:, iu[0], iu[1]])
    r = r - r.mean(dim=1, keepdim=True)
    norm = torch.linalg.vector_norm(r, dim=1)
    bad = (norm <= 64 * EPS * r.shape[1] ** 1.5).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"rsa: {name} layer {bad[0]} has an RDM whose {r.shape[1]} dissimilarities are all equal; "
            "its rank correlation is undefined"
        )
    return r / norm[:, None]


def standardized_rank_rdms(Xs: torch.Tensor, name: str = "X") -> torch.Tensor:
    """Symmetric ``[L, n, n]`` matrices R with zero diagonal and ``rsa(X, Y)[a, b] = <R_a, S_b>``.

    The triangles hold :func:`rank_vectors` divided by sqrt(2) (each pair is counted twice). Used by
    the permutation null: shuffling Y's rows by p maps ``S`` to ``S[p][:, p]``.
    """
    L, n, _ = Xs.shape
    r = rank_vectors(Xs, name) / math.sqrt(2.0)
    iu = torch.triu_indices(n, n, offset=1, device=Xs.device)
    R = torch.zeros(L, n, n, dtype=torch.float64, device=Xs.device)
    R[:, iu[0], iu[1]] = r
    return R + R.transpose(1, 2)


@measure("rsa", kind="similarity", symmetric=True, value_range=(-1.0, 1.0),
         invariances=("isotropic_scaling", "permutation"), min_n=3,
         reference="Kriegeskorte, Mur & Bandettini 2008, Representational similarity analysis - connecting the "
         "branches of systems neuroscience (Front. Syst. Neurosci.)",
         description="Spearman correlation of correlation-distance RDMs", family="rsa")
def rsa(X: Any, Y: Any) -> torch.Tensor:
    """RSA score for all layer pairs: Spearman correlation between correlation-distance RDMs.

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.

    Returns:
        ``[La, Lb]`` float64 in [-1, 1]. Invariant to isotropic scaling and feature permutation (and to
        any per-row shift or positive rescaling); not to rotations or column translation.

    Raises:
        ValueError: non-finite values, row counts that differ, n < 3, a constant layer, a row constant
            across features, an RDM with all-equal entries.
    """
    # float64, each layer scaled by a power of two (exact; correlation distances do not depend on it)
    Xs, Ys, _, _ = prepare_pair(X, Y, "rsa", min_n=3, why="an RDM needs at least 3 unit pairs", center=False)
    return (rank_vectors(Xs, "X") @ rank_vectors(Ys, "Y").T).clamp_(-1.0, 1.0)
