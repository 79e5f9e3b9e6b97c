"""Small linear-algebra floor shared by the measure families.

All helpers work on stacks ``[L, n, d]`` (or Gram stacks ``[L, n, n]``) and keep the input dtype;
callers pass float64.
"""

from __future__ import annotations

import torch

# Working-memory budget (bytes) for one intermediate tensor; larger products are computed in chunks.
CHUNK_BYTES = 256 * 2**20


def center(X: torch.Tensor) -> torch.Tensor:
    """Subtract the column means over rows: ``[L, n, d] -> [L, n, d]``.

    Two passes: the mean of the once-centered values is subtracted too, which removes the rounding of the
    first mean (large for columns far from zero, e.g. values near 1e8 that vary by 1).
    """
    Xc = X - X.mean(dim=-2, keepdim=True)
    return Xc - Xc.mean(dim=-2, keepdim=True)


def pow2_factor(e: torch.Tensor, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two powers of two whose product is ``2^e`` (``e`` an integer tensor), each inside the float range.

    ``2^e`` alone overflows for ``e > 1023`` (the factor that lifts subnormal values); multiplying by the
    two factors in turn is exact wherever multiplying by ``2^e`` would be.
    """
    half = torch.div(e, 2, rounding_mode="floor")
    one = torch.ones(e.shape, dtype=dtype, device=e.device)
    return torch.ldexp(one, half), torch.ldexp(one, e - half)


def pow2_scale(X: torch.Tensor) -> torch.Tensor:
    """Scale each layer of ``[L, n, d]`` by a power of two so its largest magnitude lies in [0.5, 1).

    Multiplying by a power of two is exact in floating point, so scale-invariant measures give the same
    bits as without it, while Gram matrices of extreme inputs (1e-150 or 1e150, or subnormal values
    like 1e-310) stay finite and normal.
    """
    amax = X.abs().amax(dim=(1, 2))
    _, e = torch.frexp(amax)
    f1, f2 = pow2_factor(-e, X.dtype)
    return X * f1[:, None, None] * f2[:, None, None]


def lift_tiny(X: torch.Tensor) -> torch.Tensor:
    """``X`` itself, or, for a float64 stack with a layer whose largest magnitude is below ``2^-900``
    (subnormal-range values: their products underflow), :func:`pow2_scale` of it (an exact copy)."""
    if X.dtype != torch.float64 or not X.numel():
        return X
    big = torch.maximum(X.amax(dim=(1, 2)).abs(), X.amin(dim=(1, 2)).abs())
    return pow2_scale(X) if bool((big < 2.0**-900).any()) else X


def gram(Xc: torch.Tensor) -> torch.Tensor:
    """Linear Gram matrices ``X X^T``: ``[L, n, d] -> [L, n, n]``."""
    return Xc @ Xc.transpose(-1, -2)


def double_center(K: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 11^T/n`` for a stack of square matrices ``[L, n, n]``."""
    K = K - K.mean(dim=-1, keepdim=True)
    return K - K.mean(dim=-2, keepdim=True)


def u_center(K: torch.Tensor) -> torch.Tensor:
    """U-centering of a stack of symmetric matrices (Szekely & Rizzo 2014; Song et al. 2012).

    For ``n >= 4``: zero the diagonal, then subtract row means (divided by n-2), column means and add
    the grand mean (divided by (n-1)(n-2)); the diagonal of the result is zero. The unbiased HSIC
    estimator is ``<U(K), U(L)> / (n (n-3))``.
    """
    n = K.shape[-1]
    K = K.clone()
    K.diagonal(dim1=-2, dim2=-1).zero_()
    row = K.sum(dim=-1, keepdim=True) / (n - 2)
    total = K.sum(dim=(-2, -1), keepdim=True) / ((n - 1) * (n - 2))
    U = K - row - row.transpose(-1, -2) + total
    U.diagonal(dim1=-2, dim2=-1).zero_()
    return U


def sq_distances(X: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between rows: ``[L, n, d] -> [L, n, n]`` (zero diagonal, >= 0)."""
    sq = (X * X).sum(dim=-1)
    D = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * gram(X)
    D.clamp_(min=0)
    D.diagonal(dim1=-2, dim2=-1).zero_()
    return D


def median_lastdims(D: torch.Tensor) -> torch.Tensor:
    """Median of each ``[n, n]`` matrix in a stack, averaging the two middle values (as numpy does)."""
    flat = D.reshape(D.shape[0], -1)
    m = flat.shape[1]
    lo = torch.kthvalue(flat, (m + 1) // 2, dim=1).values
    if m % 2:
        return lo
    hi = torch.kthvalue(flat, m // 2 + 1, dim=1).values
    return (lo + hi) / 2


def flat_inner(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """All-pairs Frobenius inner products: ``[La, ...], [Lb, ...] -> [La, Lb]`` as one GEMM."""
    return A.reshape(A.shape[0], -1) @ B.reshape(B.shape[0], -1).T


def self_inner(A: torch.Tensor) -> torch.Tensor:
    """Frobenius inner product of each matrix with itself: ``[L, ...] -> [L]``."""
    flat = A.reshape(A.shape[0], -1)
    return (flat * flat).sum(dim=1)


def cross_sqnorms(Xc: torch.Tensor, Yc: torch.Tensor) -> torch.Tensor:
    """``||X_a^T Y_b||_F^2`` for all layer pairs via the feature route.

    One GEMM ``[n, La*da]^T @ [n, Lb*db]`` (split over blocks of X layers when the product would exceed
    the working-memory budget). Returns ``[La, Lb]``.
    """
    La, n, da = Xc.shape
    Lb, _, db = Yc.shape
    Ycat = Yc.permute(1, 0, 2).reshape(n, Lb * db)
    per_layer = da * Lb * db * Xc.element_size()
    step = max(1, min(La, CHUNK_BYTES // max(per_layer, 1)))
    out = []
    for a0 in range(0, La, step):
        c = min(step, La - a0)
        Xcat = Xc[a0 : a0 + c].permute(1, 0, 2).reshape(n, c * da)
        C = (Xcat.T @ Ycat).reshape(c, da, Lb, db)
        out.append((C * C).sum(dim=(1, 3)))
    return torch.cat(out, dim=0)
