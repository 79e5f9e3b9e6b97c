"""Input checks shared by every measure and by the rest of the public Python API.

Every check raises a ValueError that names the argument, the offending value and the rule, so a
bad input never turns into a silent NaN further down, nor into a TypeError or RuntimeError from
deep inside numpy or torch.  Inputs are upcast to the compute dtype (float64) *before* any Gram
matrix, norm or mean is formed, so float16/bfloat16 representations are safe.

One rule per kind of argument:

- arrays of numbers (representation stacks, chunks, counts, failures, probabilities): :func:`as_numbers`
  / :func:`as_tensor` accept a torch tensor, a numpy array of a bool, integer or floating dtype, or
  nested lists of numbers (converted); they refuse None, strings, dicts and sets, numpy arrays of dtype
  object or of strings, ragged lists and lists holding None or strings.
- labels and ids (labels, predictions, document ids, groups): :func:`as_labels` accepts one string or
  number per row and refuses None, a single string, nested or ragged lists and missing entries (None,
  NaN, inf).
- texts: :func:`as_texts` accepts a sequence of strings and refuses a single string and non-strings.

Whether a layer has any variance to measure is judged in the input's own dtype (:func:`check_spread`:
float32 rows near 1e8 are 8 apart).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

COMPUTE_DTYPE = torch.float64

# Relative size under which a centered layer counts as constant: ||X - mean||_F <= tol * ||X||_F.
ZERO_VARIANCE_RTOL = 64 * torch.finfo(torch.float64).eps

# A layer none of whose columns spans more than this many steps of its dtype at the column's magnitude has
# no variance above rounding (float32 values near 1e8 are 8 apart): a measure of it would measure rounding.
RESOLUTION_STEPS = 64
# A constant layer of a low-precision dtype whose values are at least this far apart where they lie (float32
# near 1e8: 8) may have been rows that differed before the cast: its message says so.
COARSE_STEP = 2.0**-10


#: The shape a stack argument takes, as error messages state it.
STACK_SHAPE = "[L, n, d] or [n, d]"


def describe(value: Any) -> str:
    """A short description of a value that is not an array of numbers, for an error message."""
    if value is None:
        return "None"
    if isinstance(value, (str, bytes)):
        text = repr(value if len(value) <= 40 else value[:37] + type(value)("..."))
        return f"a {type(value).__name__} {text}"
    if isinstance(value, np.ndarray):
        hint = " (if it holds numbers, convert it with .astype(float))" if value.dtype == object else ""
        return f"a numpy array of dtype {value.dtype}{hint}"
    if isinstance(value, (bool, int, float, np.generic)):
        return f"{type(value).__name__} {value!r}"
    kind = type(value).__name__
    if hasattr(value, "__len__") and not isinstance(value, torch.Tensor) and len(value) == 0:
        return f"an empty {kind}"
    return f"{'an' if kind[0] in 'aeiouAEIOU' else 'a'} {kind}"


def _first_non_number(values: Any, at: tuple = ()) -> tuple[tuple, Any] | None:
    """The index and value of the first entry of a nested sequence that is not a real number (None if all are)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        ok = isinstance(values, (int, float, np.integer, np.floating, np.bool_, torch.Tensor))
        return None if ok else (at, values)
    for i, v in enumerate(values):
        bad = _first_non_number(v, at + (i,))
        if bad is not None:
            return bad
    return None


def as_numbers(x: Any, name: str, shape: str = STACK_SHAPE) -> np.ndarray:
    """Return ``x`` (a numpy array, nested lists or tuples of numbers, a CPU tensor) as a numpy array of
    numbers (bool, integer or floating dtype, any shape; the caller checks the shape).

    Raises:
        ValueError: naming ``name`` and the rule ("{name} must be a tensor or array of numbers of shape
            {shape}") with what was given instead: None, a string, a dict or set, a numpy array of dtype
            object or of strings, a ragged list (rows of different lengths), a list holding None or a string.
    """
    rule = f"{name} must be a tensor or array of numbers of shape {shape}"
    if x is None or isinstance(x, (str, bytes, dict, set, frozenset)):
        raise ValueError(f"{rule}; got {describe(x)}")
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.double() if x.dtype == torch.bfloat16 else x
    try:
        a = np.asarray(x)
    except (ValueError, TypeError, RuntimeError):
        raise ValueError(f"{rule}; got a ragged {type(x).__name__} (its rows differ in length)") from None
    if a.dtype.kind in "biufc":
        return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))
    if isinstance(x, np.ndarray):
        raise ValueError(f"{rule}; got {describe(x)}")
    bad = _first_non_number(x)
    if bad is None:
        raise ValueError(f"{rule}; got a {type(x).__name__} of dtype {a.dtype}")
    where = "".join(f"[{i}]" for i in bad[0])
    raise ValueError(f"{rule}; got a {type(x).__name__} holding {describe(bad[1])} at index {where}")


def as_tensor(X: Any, name: str, shape: str = STACK_SHAPE) -> torch.Tensor:
    """Return ``X`` as a torch tensor: a tensor as it is (any device), anything else through :func:`as_numbers`
    (numpy arrays, nested lists of numbers) on the CPU.

    Raises:
        ValueError: any rule of :func:`as_numbers`, naming ``name``.
    """
    if isinstance(X, torch.Tensor):
        return X
    return torch.from_numpy(np.require(as_numbers(X, name, shape), requirements="C"))


def _not_a_label(v: Any) -> bool:
    """True for a value that is no label or id: None, NaN/inf, or anything but a string, bytes or number."""
    if isinstance(v, (float, np.floating)):
        return not np.isfinite(v)
    return not isinstance(v, (str, bytes, int, np.integer, np.bool_, np.str_))


def first_non_label(values: Any) -> int | None:
    """The position of the first entry of a 1-D sequence that is not a label or id (None, NaN, inf, a list,
    an arbitrary object: anything but a string or a finite number), or None when every entry is one."""
    return next((i for i, v in enumerate(values) if _not_a_label(v)), None)


def as_labels(x: Any, name: str, what: str = "labels") -> np.ndarray:
    """Return ``x`` (a list, tuple, numpy array, pandas series, tensor; an iterator is read once) as a 1-D
    numpy array of n labels or ids, each a string or a number.

    Raises:
        ValueError: naming ``name``: None, a string, a number, a dict or set, a ragged or nested list (not
            one label per row), an empty sequence, or an entry that is not a label (None, NaN, inf, a list,
            an arbitrary object; the message gives its position).
    """
    rule = f"{name} must be a 1-D sequence of {what} (one string or number per row)"
    if not hasattr(x, "__len__") and hasattr(x, "__next__"):
        x = list(x)  # an iterator or generator: read once
    if x is None or isinstance(x, (str, bytes, dict, set, frozenset)) or not hasattr(x, "__len__"):
        raise ValueError(f"{rule}; got {describe(x)}")
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except (ValueError, TypeError, RuntimeError):
        raise ValueError(f"{rule}; got a ragged {type(x).__name__} (its rows differ in length)") from None
    if a.ndim != 1:
        raise ValueError(f"{rule}; got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty; give one entry per row")
    if a.dtype.kind in "fc":
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"{name}[{int(bad[0])}] is {a[bad[0]]!r}, a missing value; {rule}")
    elif a.dtype.kind not in "biuUS":
        i = first_non_label(a)
        if i is not None:
            raise ValueError(f"{name}[{i}] is {describe(a[i])}, not a label; {rule}")
    return a


def as_texts(texts: Any, name: str = "texts") -> list[str]:
    """Return ``texts`` (a list, tuple, numpy array or other sequence of strings) as a list of n >= 1 strings.

    Raises:
        ValueError: naming ``name``: None, a single string (give a list of texts), a dict or set, an empty
            sequence, or an entry that is not a string (None, a number, a list; the message gives its position).
    """
    rule = f"{name} must be a list of strings (one text per row)"
    if texts is None or isinstance(texts, (str, bytes, dict, set, frozenset)) or not hasattr(texts, "__len__"):
        raise ValueError(f"{rule}; got {describe(texts)}")
    out = list(texts)
    if not out:
        raise ValueError(f"{name} is empty: nothing to extract")
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}] is {describe(t)}, not a string; {rule}")
    return out


def stack_shape(X: Any, name: str = "X", *, device: torch.device | str | None = None) -> torch.Tensor:
    """Return ``X`` as a real ``[L, n, d]`` tensor on ``device``, keeping a floating dtype (others become float64).

    Checks type, shape and dtype only, not values (see :func:`as_stack`). A tensor, a numpy array or
    nested lists of numbers are accepted.

    Raises:
        ValueError: anything that is not a tensor or array of numbers (:func:`as_numbers`: None, a string,
            an object array, a ragged list ...), complex input, a shape that is not 2-D or 3-D, an empty axis.
    """
    X = as_tensor(X, name)
    if X.is_complex():
        raise ValueError(f"{name} must be real-valued; got a complex tensor of dtype {X.dtype}")
    X = X.detach()  # measures are statistics, not differentiable losses: hidden states with grad are fine
    if X.ndim == 2:
        X = X.unsqueeze(0)
    elif X.ndim != 3:
        got = f"a scalar ({X.item()!r})" if X.ndim == 0 else f"shape {tuple(X.shape)}"
        raise ValueError(f"{name} must be a [n, d] matrix or a [L, n, d] stack of layers; got {got}")
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


def shape_pair(X: Any, Y: Any, *, names: tuple[str, str] = ("X", "Y")) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape checks of :func:`as_pair` without the value checks or the float64 copy (Y moved to X's device);
    ``names`` are the arguments' names in error messages (``("x", "y")`` for an accumulator's ``update``).

    Raises:
        ValueError: any rule of :func:`stack_shape`, or row counts that differ.
    """
    a, b = names
    Xs = stack_shape(X, a)
    Ys = stack_shape(Y, b, device=Xs.device)
    if Xs.shape[1] != Ys.shape[1]:
        raise ValueError(
            f"{a} and {b} must have the same number of rows (units): {a} has n={Xs.shape[1]} rows, "
            f"{b} has n={Ys.shape[1]} rows"
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


def check_spread(
    lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype, name: str, measure: str, n: int
) -> None:
    """Raise a ValueError for a layer whose rows are all identical or differ only by the rounding of ``dtype``.

    The second case is a layer none of whose columns spans more than :data:`RESOLUTION_STEPS` steps of
    ``dtype`` at the column's magnitude (the spacing of its numbers there, at least the smallest subnormal
    step): float32 rows offset by 1e8 (spacing 8) with a spread of 10, say, whose every measure would be a
    measure of rounding. Rows that rounding made identical are a constant layer; for a low-precision dtype
    whose spacing there is at least :data:`COARSE_STEP` the message says that a cast may have done it.

    Args:
        lo, hi: column minima and maxima ``[L, d]`` (float64) of the stack as given (:func:`column_range`).
        dtype: the stack's dtype (the precision its values were rounded to).
        n: rows (for the message).
    """
    half = 0.5 * hi - 0.5 * lo  # half the column ranges (no overflow near float64's max)
    mag = torch.maximum(hi.abs(), lo.abs())
    fi = torch.finfo(dtype)
    _, e = torch.frexp(mag)  # the spacing of dtype's numbers at each column's magnitude (its unit in the last place)
    step = torch.ldexp(torch.full_like(mag, fi.eps), e - 1).clamp(min=fi.smallest_normal * fi.eps)
    dt = str(dtype).removeprefix("torch.")
    fix = ("subtract the column means before the values are rounded" if dtype == torch.float64 else
           f"centre the representations (subtract the column means) before casting to {dt}, or pass float64")
    bad = (half == 0).all(-1).nonzero().flatten().tolist()
    if bad:
        a = bad[0]
        coarse = dtype != torch.float64 and float(step[a].max()) >= COARSE_STEP  # e.g. float32 values near 1e8
        raise ValueError(
            f"{name} layer {a} has zero variance after centering (all {n} rows are identical)"
            f"{'' if len(bad) == 1 else f'; so do layers {bad[1:]}'}; {measure} is undefined for a constant layer"
            + (f"; {dt} precision near {float(mag[a].max()):.3g} is {float(step[a].max()):.3g}: rows that differed "
               f"by less became identical when cast ({fix})" if coarse else "")
        )
    blurred = ((2 * half <= RESOLUTION_STEPS * step).all(-1)).nonzero().flatten().tolist()
    if blurred:
        a = blurred[0]
        raise ValueError(
            f"{name} layer {a} has no variance above {dt} precision: its rows differ only by rounding (no column "
            f"spans more than {RESOLUTION_STEPS} steps of {dt} at its magnitude; largest column range "
            f"{float(2 * half[a].max()):.3g} at values up to {float(mag[a].max()):.3g}); {measure} would measure "
            f"rounding: {fix}"
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

    ``Xc``/``Yc`` are the column-centered stacks (the inputs themselves when ``center`` is False). Each
    layer is multiplied by a power of two (exact) so that its largest entry lies in [0.5, 1), before and
    after centering; callers must be invariant to isotropic scaling of a layer.

    Raises:
        ValueError: non-finite values, bad shapes, row counts that differ, ``n < min_n``, or a layer whose
            rows are identical or differ only by rounding (:func:`check_spread`, in the input's own dtype).
    """
    from ._linalg import center as _center
    from ._linalg import pow2_scale

    Xs, Ys = shape_pair(X, Y)
    rx, ry = column_range(Xs, "X"), column_range(Ys, "Y")  # finiteness
    check_min_n(Xs.shape[1], min_n, measure, why)
    check_spread(*rx, Xs.dtype, "X", measure, Xs.shape[1])
    check_spread(*ry, Ys.dtype, "Y", measure, Ys.shape[1])
    # exact power-of-two rescaling per layer (every measure here is scale-invariant): keeps Gram entries
    # and their squares inside the normal float64 range for inputs of any magnitude, subnormal ones included
    Xs, Ys = pow2_scale(Xs.to(COMPUTE_DTYPE)), pow2_scale(Ys.to(COMPUTE_DTYPE))
    if not center:
        return Xs, Ys, Xs, Ys
    return Xs, Ys, pow2_scale(_center(Xs)), pow2_scale(_center(Ys))
