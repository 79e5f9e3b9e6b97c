"""Nearest-neighbour alignment: mutual k-NN and CKNNA (Huh, Cheung, Wang & Isola 2024, "The Platonic
Representation Hypothesis", ICML), all layer pairs.

Neighbours are by cosine similarity between rows (each row scaled to unit length; no centering by
default, as in the paper), self excluded, ties broken deterministically by the lower row index
(a stable sort).

- :func:`mutual_knn`: mean over units of ``|N_X(i) & N_Y(i)| / k``; ``k/(n-1)`` in expectation
  for unrelated representations.
- :func:`cknna`: centered kernel nearest-neighbour alignment,
  ``Align(K, L) / sqrt(Align(K, K) Align(L, L))`` with
  ``Align(K, L) = sum_{i != j} a_ij (K_ij - mean_l K_il)(L_ij - mean_l L_il)`` and
  ``a_ij = 1`` when j is among the k nearest neighbours of i in both spaces (the paper's definition;
  the authors' released code instead applies the unbiased HSIC estimator to the masked kernels).

Pairs are scored from neighbour lists by comparing index sets (cost ``La Lb n k^2``) or, when
``k^2 > n``, as one GEMM of dense ``[n, n]`` neighbour matrices.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import _linalg as la
from ._meta import measure
from ._validate import check_int_range, prepare_pair

HUH_2024 = "Huh, Cheung, Wang & Isola 2024, The Platonic Representation Hypothesis (ICML)"

EPS = torch.finfo(torch.float64).eps


def unit_rows(Xs: torch.Tensor, name: str, measure: str, center: bool) -> torch.Tensor:
    """Rows scaled to unit Euclidean norm (after column centering when ``center``).

    Raises:
        ValueError: a row with zero norm (cosine similarity undefined).
    """
    Z = la.center(Xs) if center else Xs
    norms = torch.linalg.vector_norm(Z, dim=-1)
    scale = torch.linalg.vector_norm(Xs, dim=(1, 2)) / math.sqrt(Xs.shape[1])
    bad = norms <= 64 * EPS * scale[:, None]
    if bool(bad.any()):
        layer, row = bad.nonzero()[0].tolist()
        raise ValueError(
            f"{measure}: {name} layer {layer} has {int(bad[layer].sum())} row(s) with zero norm"
            f"{' after centering' if center else ''} (first: row {row}); cosine neighbours are undefined"
        )
    return Z / norms[..., None]


def neighbours(Z: torch.Tensor, k: int, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most cosine-similar rows of each row, self excluded, ties to the lower index.

    Args:
        Z: ``[L, n, d]`` unit rows.
        k: neighbours per row.
        ids: optional ``[n]`` unit ids (a bootstrap resample repeats units): rows with the same id
            as row i are excluded like i itself.

    Returns:
        ``(idx, sim)``: ``[L, n, k]`` neighbour indices and their cosine similarities, most similar first.
    """
    L, n, _ = Z.shape
    step = max(1, min(n, la.CHUNK_BYTES // max(L * n * 8 * 3, 1)))
    idx_out, sim_out = [], []
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        S = Z[:, r0:r1] @ Z.transpose(1, 2)  # [L, c, n]
        rows = torch.arange(r1 - r0, device=Z.device)
        S[:, rows, rows + r0] = -math.inf
        if ids is not None:
            S.masked_fill_((ids[r0:r1, None] == ids[None, :])[None], -math.inf)
        vals, order = torch.sort(S, dim=-1, descending=True, stable=True)
        idx_out.append(order[..., :k])
        sim_out.append(vals[..., :k])
    return torch.cat(idx_out, dim=1), torch.cat(sim_out, dim=1)


def _check_k(k: Any, n: int, measure: str) -> int:
    return check_int_range(k, "k", 1, n - 2, measure, f"1 <= k < n - 1 = {n - 1}, with n={n} rows")


def _prepare(X: Any, Y: Any, k: Any, measure: str, center: bool):
    # float64, each layer scaled by a power of two (exact; cosines do not depend on it)
    Xs, Ys, _, _ = prepare_pair(X, Y, measure, min_n=3, why="k >= 1 neighbours other than self must leave one row out",
                                center=False)
    kk = _check_k(k, Xs.shape[1], measure)
    return unit_rows(Xs, "X", measure, center), unit_rows(Ys, "Y", measure, center), kk


def _use_dense(n: int, k: int) -> bool:
    return k * k > n


def dense_neighbour_matrix(idx: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
    """Scatter neighbour lists ``[L, n, k]`` into dense ``[L, n, n]`` matrices (1 or ``values`` at neighbours)."""
    L, n, k = idx.shape
    M = torch.zeros(L, n, n, dtype=torch.float64, device=idx.device)
    src = torch.ones(L, n, k, dtype=torch.float64, device=idx.device) if values is None else values
    return M.scatter_(2, idx, src)


def _pair_sums(idx_x, idx_y, vx=None, vy=None) -> torch.Tensor:
    """``sum_i sum_{s,t} [idx_x[a,i,s] == idx_y[b,i,t]] * vx[a,i,s] * vy[b,i,t]`` for all pairs ``[La, Lb]``.

    Without values it counts shared neighbours.
    """
    La, n, k = idx_x.shape
    Lb = idx_y.shape[0]
    step = max(1, min(La, la.CHUNK_BYTES // max(Lb * n * k * k * 9, 1)))
    out = []
    for a0 in range(0, La, step):
        eq = idx_x[a0 : a0 + step, None, :, :, None] == idx_y[None, :, :, None, :]  # [c, Lb, n, k, k]
        if vx is None:
            out.append(eq.sum(dim=(2, 3, 4)).to(torch.float64))
        else:
            w = eq.to(torch.float64) * vx[a0 : a0 + step, None, :, :, None] * vy[None, :, :, None, :]
            out.append(w.sum(dim=(2, 3, 4)))
    return torch.cat(out, dim=0)


@measure("mutual_knn", kind="similarity", symmetric=True, value_range=(0.0, 1.0),
         invariances=("isotropic_scaling", "orthogonal", "permutation"), min_n=3, reference=HUH_2024,
         description="share of each unit's k cosine nearest neighbours found in both representations", family="knn")
def mutual_knn(X: Any, Y: Any, *, k: int = 10, center: bool = False) -> torch.Tensor:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024) for all layer pairs.

    ``(1/n) sum_i |N_X(i) & N_Y(i)| / k`` with ``N(i)`` the k rows most cosine-similar to row i
    (self excluded, ties to the lower index).

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.
        k: neighbours per unit, ``1 <= k < n - 1``.
        center: subtract column means before the cosine (off by default, as in the paper).

    Returns:
        ``[La, Lb]`` float64 in [0, 1]; about ``k / (n - 1)`` for unrelated representations. Invariant to
        orthogonal maps, isotropic scaling and feature permutation (and translation when ``center``).

    Raises:
        ValueError: non-finite values, row counts that differ, n < 3, k out of range, a constant layer,
            a zero row.
    """
    Zx, Zy, k = _prepare(X, Y, k, "mutual_knn", center)
    return knn_scores("mutual_knn", Zx, Zy, k)


def knn_scores(measure: str, Zx: torch.Tensor, Zy: torch.Tensor, k: int, ids: torch.Tensor | None = None):
    """``mutual_knn`` or ``cknna`` values ``[La, Lb]`` from unit-row stacks (``ids``: see :func:`neighbours`)."""
    if measure == "cknna":
        return cknna_parts(Zx, Zy, k, ids)[0]
    n = Zx.shape[1]
    ix, _ = neighbours(Zx, k, ids)
    iy, _ = neighbours(Zy, k, ids)
    if _use_dense(n, k):
        counts = la.flat_inner(dense_neighbour_matrix(ix), dense_neighbour_matrix(iy))
    else:
        counts = _pair_sums(ix, iy)
    return (counts / (n * k)).clamp_(0.0, 1.0)


def centered_neighbour_values(Z: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """``K_ij - mean_l K_il`` at each listed neighbour j, for the cosine kernel ``K = Z Z^T``.

    The row mean runs over all n units (self included). ``[L, n, d], [L, n, k] -> [L, n, k]``.
    """
    row_mean = (Z @ Z.sum(dim=1, keepdim=True).transpose(1, 2)).squeeze(-1) / Z.shape[1]  # [L, n]
    return sim - row_mean[..., None]


@measure("cknna", kind="similarity", symmetric=True, value_range=(-1.0, 1.0),
         invariances=("isotropic_scaling", "orthogonal", "permutation"), min_n=3, reference=HUH_2024,
         description="centered kernel alignment restricted to mutual k-nearest-neighbour pairs", family="knn",
         display_range=(0.0, 1.0))
def cknna(X: Any, Y: Any, *, k: int = 10, center: bool = False) -> torch.Tensor:
    """Centered kernel nearest-neighbour alignment (Huh et al. 2024) for all layer pairs.

    CKA restricted to mutual k-NN pairs: ``Align(K, L) / sqrt(Align(K, K) Align(L, L))`` with
    ``Align(K, L) = sum_{i != j} a_ij (K_ij - mean_l K_il)(L_ij - mean_l L_il)``, ``K``, ``L`` cosine
    kernels, ``a_ij = 1`` when j is among the k nearest neighbours of i in both (in the single space for
    the self terms).

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.
        k: neighbours per unit, ``1 <= k < n - 1``.
        center: subtract column means before the cosine (off by default).

    Returns:
        ``[La, Lb]`` float64 in [-1, 1]. Invariant to orthogonal maps, isotropic scaling and feature
        permutation.

    Raises:
        ValueError: non-finite values, row counts that differ, n < 3, k out of range, a constant layer,
            a zero row, a layer whose self-alignment is 0.
    """
    Zx, Zy, k = _prepare(X, Y, k, "cknna", center)
    values, _ = cknna_parts(Zx, Zy, k)
    return values


def _self_alignment(v: torch.Tensor, name: str) -> torch.Tensor:
    s = (v * v).sum(dim=(1, 2))
    bad = (s <= 0).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"cknna: {name} layer {bad[0]} has zero self-alignment (every neighbour similarity equals the "
            "row mean); the measure is undefined"
        )
    return s


def cknna_parts(Zx: torch.Tensor, Zy: torch.Tensor, k: int, ids: torch.Tensor | None = None):
    """CKNNA values ``[La, Lb]`` and the neighbour data used, from unit-row stacks."""
    n = Zx.shape[1]
    ix, sx = neighbours(Zx, k, ids)
    iy, sy = neighbours(Zy, k, ids)
    vx, vy = centered_neighbour_values(Zx, sx), centered_neighbour_values(Zy, sy)
    hx, hy = _self_alignment(vx, "X"), _self_alignment(vy, "Y")
    if _use_dense(n, k):
        num = la.flat_inner(dense_neighbour_matrix(ix, vx), dense_neighbour_matrix(iy, vy))
    else:
        num = _pair_sums(ix, iy, vx, vy)
    return (num / torch.sqrt(hx[:, None] * hy[None, :])).clamp_(-1.0, 1.0), (ix, vx, iy, vy)


def pair_matrices(
    Xs: torch.Tensor, measure: str, *, k: int = 10, center: bool = False, name: str = "X"
) -> torch.Tensor:
    """Dense per-layer matrices ``[L, n, n]`` with ``measure(X, Y)[a, b] = <A_a, B_b>`` (validated stack).

    Used by the permutation null: shuffling Y's rows by p maps ``B`` to ``B[p][:, p]``.
    """
    n = Xs.shape[1]
    k = _check_k(k, n, measure)
    Z = unit_rows(Xs, name, measure, center)
    idx, sim = neighbours(Z, k)
    if measure == "mutual_knn":
        return dense_neighbour_matrix(idx) / math.sqrt(n * k)
    v = centered_neighbour_values(Z, sim)
    h = _self_alignment(v, name)
    return dense_neighbour_matrix(idx, v) / torch.sqrt(h)[:, None, None]
