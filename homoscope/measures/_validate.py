"""Input checks shared by every measure.

Every check raises a ValueError that names the argument, the offending value and the rule, so a
bad input never turns into a silent NaN further down.  Inputs are upcast to the compute dtype
(float64) *before* any Gram matrix, norm or mean is formed, so float16/bfloat16 representations
are safe.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

COMPUTE_DTYPE = torch.float64

# Relative size under which a centered layer counts as constant: ||X - mean||_F <= tol * ||X||_F.
ZERO_VARIANCE_RTOL = 64 * torch.finfo(torch.float64).eps


def stack_shape(X: Any, name: str = "X", *, device: torch.device | str | None = None) -> torch.Tensor:
    """Return ``X`` as a real ``[L, n, d]`` tensor on ``device``, keeping a floating dtype (others become float64).

    Checks shape and dtype only, not values (see :func:`as_stack`).

    Raises:
        ValueError: complex input, a shape that is not 2-D or 3-D, an empty axis.
    """
    if isinstance(X, np.ndarray):
        if np.iscomplexobj(X):
            raise ValueError(f"{name} must be real-valued; got a complex array of dtype {X.dtype}")
        X = torch.from_numpy(np.ascontiguousarray(X))
    elif not isinstance(X, torch.Tensor):
        X = torch.as_tensor(X)
    if X.is_complex():
        raise ValueError(f"{name} must be real-valued; got a complex tensor of dtype {X.dtype}")
    X = X.detach()  # measures are statistics, not differentiable losses: hidden states with grad are fine
    if X.ndim == 2:
        X = X.unsqueeze(0)
    elif X.ndim != 3:
        raise ValueError(f"{name} must be a [n, d] matrix or a [L, n, d] stack of layers; got shape {tuple(X.shape)}")
    L, n, d = X.shape
    if L == 0 or n == 0 or d == 0:
        raise ValueError(f"{name} must have at least one layer, row and column; got shape [L={L}, n={n}, d={d}]")
    dtype = X.dtype if X.is_floating_point() else COMPUTE_DTYPE
    return X.to(device=X.device if device is None else device, dtype=dtype)


def raise_non_finite(X: torch.Tensor, name: str) -> None:
    """Raise the ValueError that names the first NaN/inf entry of ``X [L, n, d]`` (if there is one)."""
    finite = torch.isfinite(X)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        count = int((~finite).sum())
        raise ValueError(
            f"{name} contains {count} non-finite value(s) (NaN or inf), the first at layer {bad[0]}, "
            f"row {bad[1]}, column {bad[2]}; all entries must be finite"
        )


def column_range(X: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Column minima and maxima ``[L, d]`` (float64) of a non-empty ``X [L, n, d]``; raises
    :func:`raise_non_finite`'s ValueError if X holds a NaN/inf.

    Two reductions (NaN and inf show in the minima/maxima; separate amin/amax are ~3x faster than
    aminmax over dim 1 on CPU), and no mask of X's size.
    """
    lo, hi = X.amin(dim=1).double(), X.amax(dim=1).double()
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
        raise_non_finite(X, name)
    return lo, hi


def as_stack(
    X: Any,
    name: str = "X",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = COMPUTE_DTYPE,
) -> torch.Tensor:
    """Return ``X`` as a finite ``[L, n, d]`` tensor of ``dtype`` on ``device``.

    Args:
        X: a ``[n, d]`` matrix (a stack of one layer) or a ``[L, n, d]`` stack; a torch tensor of
            any real dtype (float16/bfloat16 included) on any device, or anything
            ``torch.as_tensor`` accepts (numpy arrays, nested lists).
        name: the argument name used in error messages.
        device: target device; ``None`` keeps X's device.
        dtype: compute dtype; the upcast happens here, before any reduction.

    Returns:
        Tensor ``[L, n, d]`` of ``dtype``.

    Raises:
        ValueError: complex input, a shape that is not 2-D or 3-D, an empty axis, or any NaN/inf.
    """
    X = stack_shape(X, name, device=device)
    raise_non_finite(X, name)
    return X.to(dtype=dtype)


def as_pair(X: Any, Y: Any, *, dtype: torch.dtype = COMPUTE_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two stacks for a measure: both ``[L, n, d]``, finite, same n, on X's device.

    Raises:
        ValueError: any rule of :func:`as_stack`, or row counts that differ.
    """
    Xs, Ys = shape_pair(X, Y)
    raise_non_finite(Xs, "X")
    raise_non_finite(Ys, "Y")
    return Xs.to(dtype=dtype), Ys.to(dtype=dtype)


def shape_pair(X: Any, Y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape checks of :func:`as_pair` without the value checks or the float64 copy (Y moved to X's device).

    Raises:
        ValueError: any shape rule of :func:`stack_shape`, or row counts that differ.
    """
    Xs = stack_shape(X, "X")
    Ys = stack_shape(Y, "Y", device=Xs.device)
    if Xs.shape[1] != Ys.shape[1]:
        raise ValueError(
            f"X and Y must have the same number of rows (units): X has n={Xs.shape[1]} rows, Y has n={Ys.shape[1]} rows"
        )
    return Xs, Ys


def check_min_n(n: int, min_n: int, measure: str, why: str) -> None:
    """Raise a ValueError when ``n < min_n`` for ``measure`` (``why`` states the reason)."""
    if n < min_n:
        raise ValueError(f"{measure} needs n >= {min_n} rows ({why}); got n={n}")


def check_variance(Xc: torch.Tensor, X: torch.Tensor, name: str, measure: str) -> None:
    """Raise a ValueError when a layer of the centered stack ``Xc`` is (numerically) constant.

    Args:
        Xc: centered stack ``[L, n, d]``.
        X: the stack before centering (sets the scale of the tolerance).
    """
    spread = torch.linalg.vector_norm(Xc, dim=(1, 2))
    scale = torch.linalg.vector_norm(X, dim=(1, 2))
    bad = (spread <= ZERO_VARIANCE_RTOL * scale).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"{name} layer {bad[0]} has zero variance after centering (all {X.shape[1]} rows are identical)"
            f"{'' if len(bad) == 1 else f'; so do layers {bad[1:]}'}; {measure} is undefined for a constant layer"
        )


def check_option_positive(value: Any, name: str, measure: str) -> None:
    """Raise a ValueError unless ``value`` is a finite number > 0."""
    try:
        ok = float(value) > 0 and np.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{measure}: {name} must be a finite number > 0; got {name}={value!r}")


def check_int_range(value: Any, name: str, lo: int, hi: int, measure: str, rule: str) -> int:
    """Return ``int(value)`` when ``lo <= value <= hi``; otherwise raise ValueError stating ``rule``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{measure}: {name} must be an integer ({rule}); got {name}={value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{measure}: {name} out of range ({rule}); got {name}={value}")
    return int(value)


def prepare_pair(
    X: Any, Y: Any, measure: str, *, min_n: int = 2, why: str = "a spread needs two rows", center: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a pair of stacks for ``measure`` and return ``(X, Y, Xc, Yc)`` in float64.

    ``Xc``/``Yc`` are the column-centered stacks (the inputs themselves when ``center`` is False).
    Each layer is multiplied by a power of two (exact) so that its largest entry lies in [0.5, 1);
    callers must be invariant to isotropic scaling of a layer.

    Raises:
        ValueError: non-finite values, bad shapes, row counts that differ, ``n < min_n`` or a layer
            with zero variance after centering.
    """
    from ._linalg import center as _center
    from ._linalg import pow2_scale

    Xs, Ys = as_pair(X, Y)
    check_min_n(Xs.shape[1], min_n, measure, why)
    # exact power-of-two rescaling per layer (every measure here is scale-invariant): keeps Gram
    # entries and their squares inside the float64 range for inputs of any magnitude
    Xs, Ys = pow2_scale(Xs), pow2_scale(Ys)
    Xc, Yc = _center(Xs), _center(Ys)
    check_variance(Xc, Xs, "X", measure)
    check_variance(Yc, Ys, "Y", measure)
    Xc, Yc = pow2_scale(Xc), pow2_scale(Yc)
    if not center:
        return Xs, Ys, Xs, Ys
    return Xs, Ys, Xc, Yc
