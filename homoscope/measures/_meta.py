"""Measure metadata, declared beside each measure's code with :func:`measure`, and the registry it fills.

Invariance vocabulary used in :attr:`MeasureInfo.invariances`:

- ``translation``: adding the same vector to every row.
- ``isotropic_scaling``: multiplying all features by one positive number.
- ``orthogonal``: right-multiplying by an orthogonal matrix (rotations, reflections).
- ``permutation``: reordering features (columns).
- ``invertible_linear``: right-multiplying by any invertible matrix (at full column rank).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

KINDS = ("similarity", "distance")
# registry order: by family, then by declaration within the family's module
FAMILIES = ("cka", "cca", "procrustes", "knn", "rsa")
ROTATION_INVARIANT = ("translation", "isotropic_scaling", "orthogonal", "permutation")
KORNBLITH_2019 = "Kornblith, Norouzi, Lee & Hinton 2019, Similarity of Neural Network Representations Revisited (ICML)"


@dataclass(frozen=True)
class MeasureInfo:
    """Metadata of one registered measure.

    Attributes:
        name: registry name, e.g. ``"linear_cka"``.
        fn: ``fn(X, Y, **options) -> Tensor [La, Lb]`` on stacks ``[La, n, da]``, ``[Lb, n, db]``.
        kind: ``"similarity"`` (higher = more alike) or ``"distance"`` (lower = more alike).
        symmetric: whether ``fn(X, Y) == fn(Y, X).T``; when False compute both orders.
        value_range: ``(low, high)`` the value always lies in.
        invariances: transformations of one side that leave the value unchanged (see module doc).
        min_n: smallest number of rows the estimator accepts (some measures add rules, e.g. n > d).
        reference: the paper followed.
        description: one line for reports and ``--help``.
        options: option names and defaults accepted by ``fn`` (its keyword-only parameters).
        family: one of :data:`FAMILIES`.
        display_range: ``(low, high)`` of the report's colour scale where it differs from ``value_range``
            (debiased CKA can dip below 0 but is read on 0..1); None: ``value_range``.
    """

    name: str
    fn: Callable[..., torch.Tensor] | None
    kind: str
    symmetric: bool
    value_range: tuple[float, float]
    invariances: tuple[str, ...] = ()
    min_n: int = 2
    reference: str = ""
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    family: str = ""
    display_range: tuple[float, float] | None = None

    @property
    def higher_is_more_alike(self) -> bool:
        """True for similarities, False for distances."""
        return self.kind == "similarity"

    @property
    def streaming(self) -> bool:
        """Whether the exact streaming accumulator computes it over shards (``streaming.STREAMING_MEASURES``)."""
        from .streaming import STREAMING_MEASURES

        return self.name in STREAMING_MEASURES

    @property
    def colour_range(self) -> tuple[float, float]:
        """The colour-scale range: ``display_range`` if set, else ``value_range`` (may hold infinities)."""
        return self.display_range if self.display_range is not None else self.value_range

    @property
    def identity(self) -> float:
        """The value a representation scores against itself: the top of the range for a similarity
        (1 where the range is unbounded), the bottom for a distance (0 where unbounded)."""
        lo, hi = self.value_range
        if self.higher_is_more_alike:
            return float(hi) if math.isfinite(hi) else 1.0
        return float(lo) if math.isfinite(lo) else 0.0


_REGISTRY: dict[str, MeasureInfo] = {}


def register(info: MeasureInfo) -> MeasureInfo:
    """Add a measure to the registry (replacing one of the same name) and return it.

    Raises:
        ValueError: an unknown ``kind`` or a malformed ``value_range``.
    """
    if info.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got kind={info.kind!r} for measure {info.name!r}")
    lo, hi = info.value_range
    if not lo < hi:
        raise ValueError(f"value_range must be (low, high) with low < high; got {info.value_range!r}")
    _REGISTRY[info.name] = info
    return info


def measure(name: str, **meta: Any) -> Callable:
    """Declare the function below as measure ``name`` with the metadata ``meta`` (the fields of
    :class:`MeasureInfo` but ``name``, ``fn`` and ``options``, which come from the function itself)."""

    def declare(fn: Callable) -> Callable:
        options = {p.name: p.default for p in inspect.signature(fn).parameters.values()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY}
        register(MeasureInfo(name=name, fn=fn, options=options, **meta))
        return fn

    return declare


def registered() -> list[MeasureInfo]:
    """Every registered measure, by family (:data:`FAMILIES`), then in declaration order."""
    rank = {f: i for i, f in enumerate(FAMILIES)}
    order = {name: i for i, name in enumerate(_REGISTRY)}
    return sorted(_REGISTRY.values(), key=lambda m: (rank.get(m.family, len(rank)), order[m.name]))
