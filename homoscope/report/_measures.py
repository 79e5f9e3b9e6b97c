"""What the report needs to know about a measure: direction, range, symmetry and reference.

The report never computes a measure; it only needs to know how to read one. This module turns whatever
a ``measure_info(name)`` callable returns (a dict, a dataclass, any object with the right attributes)
into one small :class:`MeasureInfo`, falling back to a built-in table so that the report works without
the measure registry.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MeasureInfo", "BUILTIN_MEASURES", "builtin_measure_info", "default_measure_info", "resolve_measure_info",
    "manifest_measure_info",
]

_INF = math.inf


@dataclass(frozen=True)
class MeasureInfo:
    """How to read one measure's values.

    Attributes:
        name: the measure name as it appears in the results frame (``measure`` column).
        kind: ``'similarity'`` (higher = more alike) or ``'distance'`` (lower = more alike).
        value_range: ``(lo, hi)`` the values can take; a bound may be infinite.
        symmetric: whether ``m(X, Y) == m(Y, X)``; asymmetric measures carry both directions as rows.
        reference: the paper the measure follows.
        description: one line on what the measure is.
        display_range: ``(lo, hi)`` of the colour scale when it differs from ``value_range``
            (debiased CKA can dip below 0 but is read on 0..1); ``None`` = use ``value_range``.
    """

    name: str
    kind: str = "similarity"
    value_range: tuple[float, float] = (-_INF, _INF)
    symmetric: bool = True
    reference: str = ""
    description: str = ""
    display_range: tuple[float, float] | None = None

    @property
    def higher_is_better(self) -> bool:
        """True when a larger value means more alike (similarity), False for a distance."""
        return self.kind == "similarity"

    @property
    def colour_range(self) -> tuple[float, float]:
        """The colour-scale range: ``display_range`` if set, else ``value_range`` (may hold infinities)."""
        return self.display_range if self.display_range is not None else self.value_range

    @property
    def identity(self) -> float:
        """The value a representation scores against itself: the top of the range for a similarity
        (1 where the range is unbounded), the bottom for a distance (0 where unbounded)."""
        lo, hi = self.value_range
        if self.higher_is_better:
            return float(hi) if math.isfinite(hi) else 1.0
        return float(lo) if math.isfinite(lo) else 0.0


def _m(name, kind, lo, hi, sym, ref, desc, display=None) -> MeasureInfo:
    return MeasureInfo(name, kind, (float(lo), float(hi)), sym, ref, desc, display)


#: Built-in descriptions of the measures named in the design; the measure registry, when present,
#: takes precedence over this table.
BUILTIN_MEASURES: dict[str, MeasureInfo] = {
    m.name: m
    for m in [
        _m("linear_cka", "similarity", 0, 1, True, "Kornblith et al. 2019",
           "linear centered kernel alignment (biased HSIC estimator)"),
        _m("debiased_cka", "similarity", -1, 1, True, "Song et al. 2012 (unbiased HSIC); Kornblith et al. 2019",
           "linear CKA with the unbiased HSIC estimator (U-centering); may dip below 0",
           display=(0.0, 1.0)),
        _m("rbf_cka", "similarity", 0, 1, True, "Kornblith et al. 2019",
           "CKA with a Gaussian kernel, bandwidth = threshold x median distance"),
        _m("minibatch_cka", "similarity", 0, 1, True, "Nguyen et al. 2021",
           "ratio of HSIC sums accumulated over minibatches"),
        _m("cca_rho", "similarity", 0, 1, True, "Hotelling 1936; Raghu et al. 2017",
           "mean canonical correlation"),
        _m("cca_r2", "similarity", 0, 1, True, "Hotelling 1936; Kornblith et al. 2019",
           "mean squared canonical correlation"),
        _m("svcca", "similarity", 0, 1, True, "Raghu et al. 2017",
           "singular vector CCA: CCA after an SVD reduction of each side"),
        _m("pwcca", "similarity", 0, 1, False, "Morcos et al. 2018",
           "projection-weighted CCA; weighted by the first argument, direction stated"),
        _m("procrustes", "similarity", 0, 1, True, "Ding et al. 2021",
           "orthogonal Procrustes similarity (nuclear norm of the normalized cross-covariance)"),
        _m("procrustes_distance", "distance", 0, 2, True, "Ding et al. 2021",
           "orthogonal Procrustes distance between normalized representations"),
        _m("mutual_knn", "similarity", 0, 1, True, "Huh et al. 2024",
           "share of k nearest neighbours the two representations have in common"),
        _m("cknna", "similarity", -1, 1, True, "Huh et al. 2024",
           "centered kernel nearest-neighbour alignment", display=(0.0, 1.0)),
        _m("rsa", "similarity", -1, 1, True, "Kriegeskorte et al. 2008",
           "representational similarity analysis: rank correlation of dissimilarity matrices"),
    ]
}


def builtin_measure_info(name: str) -> MeasureInfo:
    """Return the built-in :class:`MeasureInfo` for ``name``.

    Raises:
        KeyError: ``name`` is not in :data:`BUILTIN_MEASURES`.
    """
    try:
        return BUILTIN_MEASURES[name]
    except KeyError:
        raise KeyError(f"measure={name!r} is not in the built-in table; known: {sorted(BUILTIN_MEASURES)}") from None


def _guess(name: str) -> MeasureInfo:
    """A neutral description for a measure nobody describes: similarity unless the name says distance."""
    kind = "distance" if "dist" in name.lower() else "similarity"
    return MeasureInfo(name=name, kind=kind)


def default_measure_info(name: str) -> Any:
    """Describe ``name`` from the measure registry (``homoscope.measures.get_measure``) when it exists and
    knows the name, else from the built-in table, else with a neutral guess (similarity, unbounded)."""
    try:
        from homoscope.measures import get_measure  # type: ignore[attr-defined]
    except ImportError:
        get_measure = None
    if get_measure is not None:
        try:
            return get_measure(name)
        except (KeyError, ValueError, LookupError):
            pass
    return BUILTIN_MEASURES.get(name) or _guess(name)


def _field(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _pair(value: Any, what: str, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float("nan") if v is None else float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"measure {name!r}: {what}={value!r} must be a pair (lo, hi) of numbers") from None
    lo = -_INF if math.isnan(lo) else lo
    hi = _INF if math.isnan(hi) else hi
    if lo > hi:
        raise ValueError(f"measure {name!r}: {what}={value!r} must have lo <= hi")
    return (lo, hi)


def resolve_measure_info(name: str, measure_info: Callable[[str], Any] | None = None) -> MeasureInfo:
    """Describe measure ``name`` as a :class:`MeasureInfo`.

    Args:
        name: measure name from the results frame.
        measure_info: callable ``name -> dict-like or object`` with ``kind``, ``value_range``,
            ``symmetric`` and ``reference`` (``description`` and ``display_range`` optional), for
            example ``homoscope.measures.get_measure``. ``None`` uses :func:`default_measure_info`.
            If the callable raises KeyError/ValueError/LookupError for a name, the default is used.
            Fields it leaves out are taken from the built-in table where it knows the name.

    Raises:
        ValueError: ``kind`` is not 'similarity' or 'distance', or a range is not a pair lo <= hi.
    """
    raw: Any = None
    if measure_info is not None:
        try:
            raw = measure_info(name)
        except (KeyError, ValueError, LookupError):
            raw = None
    if raw is None:
        raw = default_measure_info(name)
    if isinstance(raw, MeasureInfo):
        return raw
    base = BUILTIN_MEASURES.get(name) or _guess(name)
    kind = _field(raw, "kind", None)
    kind = getattr(kind, "value", kind)  # enums
    kind = str(kind).lower() if kind is not None else base.kind
    if kind not in ("similarity", "distance"):
        raise ValueError(f"measure {name!r}: kind={kind!r} must be 'similarity' or 'distance'")
    value_range = _pair(_field(raw, "value_range", None), "value_range", name)
    if value_range is None:
        value_range = base.value_range
    display_range = _pair(_field(raw, "display_range", None), "display_range", name)
    if display_range is None and value_range == base.value_range:
        display_range = base.display_range
    symmetric = _field(raw, "symmetric", None)
    reference = _field(raw, "reference", None)
    description = _field(raw, "description", None)
    return MeasureInfo(
        name=name,
        kind=kind,
        value_range=value_range,
        symmetric=base.symmetric if symmetric is None else bool(symmetric),
        reference=base.reference if reference is None else str(reference),
        description=base.description if description is None else str(description),
        display_range=display_range,
    )


def manifest_measure_info(manifest: Mapping[str, Any] | None) -> Callable[[str], Any] | None:
    """A ``measure_info`` callable reading ``manifest['measures'][name]`` where the manifest records
    the measures; None where it does not. Names it lacks raise KeyError (so the default is used)."""
    table = (manifest or {}).get("measures")
    if not isinstance(table, Mapping) or not table:
        return None

    def lookup(name: str) -> Any:
        entry = table[name]
        if not isinstance(entry, Mapping):
            raise KeyError(name)
        return entry

    return lookup
