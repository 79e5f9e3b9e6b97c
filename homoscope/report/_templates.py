"""The Jinja2 environments of the two renderings; the templates ship in ``homoscope/report/templates``.

The html environment escapes every value a template prints that is not already markup (autoescape), with
:func:`html.escape` so that quotes read ``&quot;`` and ``&#x27;``; the markdown environment escapes nothing
by itself: its templates pass data through the ``escape_md`` and ``md`` filters.
"""
from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from importlib.resources import files
from typing import Any

from jinja2 import Environment, FunctionLoader, StrictUndefined
from markupsafe import Markup

__all__ = ["TEMPLATES", "template_text", "environment"]

#: The package folder that holds the templates.
TEMPLATES = "templates"


def template_text(name: str) -> str:
    """The source of template ``name``, read through :mod:`importlib.resources`.

    Raises:
        FileNotFoundError: no such template ships with the package.
    """
    return (files("homoscope.report") / TEMPLATES / name).read_text(encoding="utf-8")


def _escape_html(value: Any) -> Any:
    """Escape a printed value for html unless it is markup already; numbers and None pass through."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return Markup(html.escape(value, quote=True))
    return value


def _load(name: str) -> str | None:
    try:
        return template_text(name)
    except FileNotFoundError:
        return None  # the loader then raises TemplateNotFound


def environment(kind: str, filters: Mapping[str, Callable[..., Any]]) -> Environment:
    """A new environment of ``kind`` (``'html'`` or ``'md'``) with ``filters``; an undefined name in a
    template is an error.

    Raises:
        ValueError: ``kind`` is neither.
    """
    if kind not in ("html", "md"):
        raise ValueError(f"kind={kind!r} must be 'html' or 'md'")
    options: dict[str, Any] = {"loader": FunctionLoader(_load), "undefined": StrictUndefined,
                               "keep_trailing_newline": True, "auto_reload": False}
    if kind == "html":
        options.update(autoescape=True, finalize=_escape_html)
    env = Environment(**options)
    env.filters.update(filters)
    return env
