"""What the report needs to know about a measure: direction, range, symmetry and reference.

The report never computes a measure; it reads the metadata each measure declares beside its code
(:class:`homoscope.measures.MeasureInfo`, from the registry). For a measure the registry does not know
(a custom measure recorded in a study's manifest, or a ``measure_info(name)`` callable returning a dict,
a dataclass or any object with the right attributes) it builds one with the same fields, neutral where
nothing is said (similarity, unbounded).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ..measures._meta import MeasureInfo

__all__ = ["MeasureInfo", "default_measure_info", "resolve_measure_info", "manifest_measure_info"]

_INF = math.inf


def _known(name: str) -> MeasureInfo | None:
    from ..measures import get_measure

    try:
        return get_measure(name)
    except ValueError:
        return None


def _guess(name: str) -> MeasureInfo:
    """A neutral description for a measure nobody describes: similarity unless the name says distance."""
    kind = "distance" if "dist" in name.lower() else "similarity"
    return MeasureInfo(name=name, fn=None, kind=kind, symmetric=True, value_range=(-_INF, _INF))


def default_measure_info(name: str) -> MeasureInfo:
    """Describe ``name`` from the measure registry, else with a neutral guess (similarity, unbounded)."""
    return _known(name) or _guess(name)


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
            Fields it leaves out are taken from the registry where it knows the name.

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
    base = default_measure_info(name)
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
        fn=base.fn,
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
