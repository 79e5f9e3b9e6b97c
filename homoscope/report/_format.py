"""How the report writes a number or a value, for its prose, its tables and ``findings.json`` alike.

Every function returns plain text (no markup, no escaping): the renderers escape it for their format.
A missing value (None, NaN, text where a number is expected) is written as an en dash, :data:`EMPTY`.
"""
from __future__ import annotations

import json
import math
from typing import Any

from ._common import finite, num

__all__ = ["EMPTY", "f3", "p_txt", "p_is", "interval", "span", "int_txt", "params_txt", "bound_txt", "value_txt",
           "plural", "seconds_txt", "share_txt"]

#: What the report writes where a value is missing.
EMPTY = "\u2013"


def f3(v: Any, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals (``'0.947'``); :data:`EMPTY` where it is not a finite number."""
    f = num(v)
    return f"{f:.{digits}f}" if math.isfinite(f) else EMPTY


def span(lo: Any, hi: Any) -> str:
    """Two bounds as ``'0.917–0.977'``; :data:`EMPTY` where either is missing."""
    return f"{f3(lo)}\u2013{f3(hi)}" if finite(lo, hi) else EMPTY


def interval(lo: Any, hi: Any, what: str = "95% CI") -> str:
    """``'95% CI 0.801–0.861'`` (``what`` first), or ``'no interval'`` where a bound is missing."""
    return f"{what} {span(lo, hi)}" if finite(lo, hi) else "no interval"


def p_txt(v: Any) -> str:
    """A p- or q-value for a table cell: ``'< 0.001'``, ``'0.012'`` or :data:`EMPTY`."""
    f = num(v)
    if not math.isfinite(f):
        return EMPTY
    return "< 0.001" if f < 0.001 else f"{f:.3f}"


def p_is(name: str, v: Any) -> str:
    """A p- or q-value in a sentence: ``'p < 0.001'`` or ``'p = 0.012'``."""
    t = p_txt(v)
    return f"{name} {t}" if t.startswith("<") else f"{name} = {t}"


def int_txt(v: Any) -> str:
    """A count with thousands separators (``'34,314'``); text that is not a number is returned as it is,
    anything else missing as :data:`EMPTY`."""
    f = num(v)
    if math.isfinite(f):
        return f"{int(f):,}"
    return v if isinstance(v, str) and v else EMPTY


def params_txt(v: Any) -> str:
    """A parameter count in short form: ``'22.7M'``, ``'1.2B'``, ``'980'``; text as it is, else :data:`EMPTY`."""
    f = num(v)
    if not math.isfinite(f):
        return v if isinstance(v, str) and v else EMPTY
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if f >= div:
            return f"{f / div:.3g}{suffix}"
    return f"{int(f)}"


def bound_txt(v: float) -> str:
    """One end of a measure's range: ``'0'``, ``'1'``, ``'∞'`` or ``'−∞'``."""
    if math.isinf(v):
        return "\u221e" if v > 0 else "\u2212\u221e"
    return f"{v:g}"


def value_txt(v: Any) -> str:
    """A manifest value as text: a string as it is, None as :data:`EMPTY`, anything else as JSON."""
    if isinstance(v, str):
        return v
    if v is None:
        return EMPTY
    try:
        return json.dumps(v, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(v)


def seconds_txt(v: float) -> str:
    """Seconds with two decimals and thousands separators; :data:`EMPTY` where missing."""
    return f"{v:,.2f}" if math.isfinite(v) else EMPTY


def share_txt(part: float, total: float) -> str:
    """``part`` as a percentage of ``total`` (``'10.0%'``); :data:`EMPTY` where it has no meaning."""
    return f"{100 * part / total:.1f}%" if total > 0 and math.isfinite(part) else EMPTY


def plural(n: int, word: str, words: str | None = None) -> str:
    """``'1 pair'``, ``'3 pairs'`` (``words`` where the plural is not ``word + 's'``)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"
