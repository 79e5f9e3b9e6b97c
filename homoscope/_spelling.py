"""How a message names a study option: as the user typed it.

Every message that names a study option calls :func:`typed` (``typed("max_length", 2)`` gives
``max_length=2``, ``typed("memory_mb")`` gives ``memory_mb``). Python keywords and the keys of a study
file are spelt alike, so that is the default. The command line runs a study inside :func:`spelled`,
with each option's label as the user gave it (``--max-length`` for a flag, the key for a value read
from the study file), and the same message reads ``--max-length=2`` there.

The labels come from the study schema (:data:`homoscope.study.options.OPTIONS`, one flag per option);
this module holds only the labels in force, so that the corpus, model and extraction layers below the
study can name options without importing it.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_NO_VALUE = object()
_LABELS: ContextVar[Mapping[str, str]] = ContextVar("homoscope_option_labels", default={})


def shown(value: Any) -> str:
    """``value`` as it is typed on the command line: ``'linear_cka,debiased_cka'``, ``'on'``, ``'4096'``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def brief(value: Any) -> str:
    """``repr(value)`` on one line, for an error message: at most 80 characters, or 400 for a string (a path
    is shown whole)."""
    text = " ".join(repr(value).split())
    cap = 400 if isinstance(value, str) else 80
    return text if len(text) <= cap else text[: cap - 3] + "..."


def typed(name: str, value: Any = _NO_VALUE) -> str:
    """Option ``name`` (and ``value``) as the user typed it.

    Outside :func:`spelled`, the keyword (``max_length=2``, ``pooling='cls'``); inside, the label given
    there: a flag with the value as a shell word (``--max-length=2``, ``--pooling=cls``; a switch is
    ``--random-init`` or ``--no-random-init``), or a study file's key as a keyword.
    """
    label = _LABELS.get().get(name, name)
    if value is _NO_VALUE:
        return label
    if not label.startswith("--"):
        return f"{label}={brief(os.fspath(value) if isinstance(value, os.PathLike) else value)}"
    if isinstance(value, bool):
        return label if value else "--no-" + label[2:]
    return f"{label}={shlex.quote(shown(value))}"


@contextmanager
def spelled(labels: Mapping[str, str]) -> Iterator[None]:
    """Within the block, :func:`typed` names option ``name`` as ``labels[name]`` (others by their keyword)."""
    token = _LABELS.set(dict(labels))
    try:
        yield
    finally:
        _LABELS.reset(token)
