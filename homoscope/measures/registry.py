"""The measure registry: a study names measures by string; the report and CLI read the metadata.

Each measure declares its metadata beside its code (``@measure(...)`` from :mod:`._meta`, in ``cka.py``,
``cca.py``, ``procrustes.py``, ``knn.py``, ``rsa.py``); importing this module imports those, so every
measure is registered. To add a measure: write the function in its family's module (or a new one
imported here) under ``@measure("name", kind=..., symmetric=..., value_range=..., ...)``; its options are
the function's keyword-only parameters. The invariance vocabulary is in :mod:`._meta`.
"""

from __future__ import annotations

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


def compute(name: str, X: Any, Y: Any, **options: Any) -> torch.Tensor:
    """Compute measure ``name`` for all layer pairs: ``[La, n, da] x [Lb, n, db] -> [La, Lb]``.

    Raises:
        ValueError: unknown measure, or any input rule of the measure.
        TypeError: an option the measure does not take.
    """
    return get_measure(name).fn(X, Y, **options)
