"""Orthogonal Procrustes similarity and distance, all layer pairs.

With centered, Frobenius-normalised inputs ``A = Xc / ||Xc||_F`` and ``B = Yc / ||Yc||_F``:

- :func:`procrustes` (similarity): ``||A^T B||_*`` (nuclear norm), in [0, 1]; the largest
  ``<A, B R>`` over orthogonal R (Schoenemann 1966).
- :func:`procrustes_distance`: ``||A||_F^2 + ||B||_F^2 - 2 ||A^T B||_* = 2 - 2 * similarity``, in
  [0, 2]; the squared orthogonal Procrustes distance of Ding, Denain & Steinhardt 2021, "Grounding
  Representation Similarity with Statistical Testing" (NeurIPS).

Each layer is reduced once to ``F = U diag(S)`` from its thin SVD (``F^T F`` has the spectrum of
``Xc^T Xc``, with at most ``min(n, d)`` columns); ``||A^T B||_*`` is then the nuclear norm of
``F_a^T F_b / (||S_a|| ||S_b||)``, one batched SVD per chunk of layer pairs.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _linalg as la
from ._meta import ROTATION_INVARIANT, measure
from ._validate import prepare_pair

DING_2021 = "Ding, Denain & Steinhardt 2021, Grounding Representation Similarity with Statistical Testing (NeurIPS)"


def layer_factors(Xc: torch.Tensor) -> torch.Tensor:
    """``[L, n, d] -> [L, n, k]`` factors F with ``F F^T = Xc Xc^T`` and ``||F||_F = 1``.

    ``k = d`` when ``d <= n`` (F is the normalised data itself), else ``k = n`` (F = U S / ||S||).
    """
    n, d = Xc.shape[1], Xc.shape[2]
    if d > n:
        U, S, _ = torch.linalg.svd(Xc, full_matrices=False)
        F = U * S[:, None, :]
    else:
        F = Xc
    return F / torch.linalg.vector_norm(F, dim=(1, 2), keepdim=True)


def nuclear_cross(Fx: torch.Tensor, Fy: torch.Tensor) -> torch.Tensor:
    """``||F_a^T F_b||_*`` for all layer pairs: ``[La, n, kx], [Lb, n, ky] -> [La, Lb]``."""
    La, _, kx = Fx.shape
    Lb, _, ky = Fy.shape
    step = max(1, min(La, la.CHUNK_BYTES // max(Lb * kx * ky * 8 * 3, 1)))
    out = []
    for a0 in range(0, La, step):
        M = torch.einsum("anp,bnq->abpq", Fx[a0 : a0 + step], Fy)
        out.append(torch.linalg.svdvals(M).sum(dim=-1))
    return torch.cat(out, dim=0)


@measure("procrustes", kind="similarity", symmetric=True, value_range=(0.0, 1.0), invariances=ROTATION_INVARIANT,
         min_n=2, reference="Schoenemann 1966; " + DING_2021,
         description="orthogonal Procrustes similarity: nuclear norm of the cross-covariance of centered, unit-norm "
         "inputs", family="procrustes")
def procrustes(X: Any, Y: Any) -> torch.Tensor:
    """Orthogonal Procrustes similarity ``||A^T B||_*`` for all layer pairs.

    ``A``, ``B`` are the column-centered inputs scaled to unit Frobenius norm. 1 means Y is a rotated /
    reflected, rescaled and translated copy of X.

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device. ``da != db`` is fine (zero-padding).

    Returns:
        ``[La, Lb]`` float64 in [0, 1]. Invariant to orthogonal maps, isotropic scaling, translation and
        feature permutation.

    Raises:
        ValueError: non-finite values, row counts that differ, n < 2, a constant layer.
    """
    _, _, Xc, Yc = prepare_pair(X, Y, "procrustes", min_n=2, why="centering needs two rows")
    return nuclear_cross(layer_factors(Xc), layer_factors(Yc)).clamp_(0.0, 1.0)


@measure("procrustes_distance", kind="distance", symmetric=True, value_range=(0.0, 2.0),
         invariances=ROTATION_INVARIANT, min_n=2, reference=DING_2021,
         description="squared orthogonal Procrustes distance 2 - 2 * procrustes (0 = same up to rotation, scale, "
         "shift)", family="procrustes")
def procrustes_distance(X: Any, Y: Any) -> torch.Tensor:
    """Squared orthogonal Procrustes distance (Ding et al. 2021) for all layer pairs.

    ``d = ||A||_F^2 + ||B||_F^2 - 2 ||A^T B||_* = 2 - 2 * procrustes(X, Y)`` with ``A``, ``B`` centered
    and scaled to unit Frobenius norm; ``min_R ||A - B R||_F^2`` over orthogonal R.

    Args:
        X: ``[La, n, da]`` or ``[n, da]``; any real dtype (upcast to float64), any device.
        Y: ``[Lb, n, db]`` or ``[n, db]``; moved to X's device.

    Returns:
        ``[La, Lb]`` float64 in [0, 2]; 0 for identical representations up to rotation, isotropic
        scaling and translation (never a tiny negative). A distance: lower = more alike.

    Raises:
        ValueError: non-finite values, row counts that differ, n < 2, a constant layer.
    """
    _, _, Xc, Yc = prepare_pair(X, Y, "procrustes_distance", min_n=2, why="centering needs two rows")
    sim = nuclear_cross(layer_factors(Xc), layer_factors(Yc))
    return (2.0 - 2.0 * sim).clamp_(0.0, 2.0)
