"""The measure registry: a study names measures by string; the report and CLI read the metadata.

Each measure declares its metadata beside its code (``@measure(...)`` from :mod:`._meta`, in ``cka.py``,
``cca.py``, ``procrustes.py``, ``knn.py``, ``rsa.py``); importing this module imports those, so every
measure is registered. To add a measure: write the function in its family's module (or a new one
imported here) under ``@measure("name", kind=..., symmetric=..., value_range=..., ...)``; its options are
the function's keyword-only parameters. The invariance vocabulary is in :mod:`._meta`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import cca, cka, knn, procrustes, rsa  # noqa: F401  (their @measure declarations register them)
from ._meta import _REGISTRY, KINDS, MeasureInfo, measure, register, registered  # noqa: F401


def list_measures() -> list[str]:
    """Names of all registered measures (by family, then in declaration order)."""
    return [m.name for m in registered()]


def get_measure(name: str) -> MeasureInfo:
    """Return the :class:`MeasureInfo` registered under ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown measure {name!r}; valid names: {', '.join(list_measures())}") from None


def check_options(name: str, options: Any) -> dict[str, Any]:
    """Return ``options`` as a dict after checking that measure ``name`` takes every one of them.

    Raises:
        ValueError: unknown measure, ``options`` not a mapping of option names, or an option the measure
            does not take (the message lists the options it takes).
    """
    info = get_measure(name)
    if not isinstance(options, Mapping):
        raise ValueError(f"the options of {name} must be a dict {{option: value}}; got {type(options).__name__}")
    unknown = [k for k in options if k not in info.options]
    if unknown:
        takes = ", ".join(info.options) or "none"
        raise ValueError(f"{name} takes no option {unknown[0]!r}; its options: {takes}")
    return dict(options)


def compute(name: str, X: Any, Y: Any, **options: Any) -> torch.Tensor:
    """Compute measure ``name`` for all layer pairs: ``[La, n, da] x [Lb, n, db] -> [La, Lb]``.

    Raises:
        ValueError: unknown measure, an option the measure does not take (:func:`check_options`), or any
            input rule of the measure.
    """
    return get_measure(name).fn(X, Y, **check_options(name, options))
