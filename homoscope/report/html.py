"""The html rendering of the report: one self-contained ``report.html`` (figures embedded as data URIs,
inline CSS, no script, no network), the same document as ``report.md``.

The template escapes every string that comes from data (model names, corpus names, labels, licences,
notes, commands, warnings); the page forbids scripts and remote loads with a Content-Security-Policy, so
that a model called ``<script>`` is only ever text.
"""
from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
from jinja2 import Environment
from markupsafe import Markup
from PIL import Image

from .._paths import atomic_write_text
from ._common import HEATMAP_DIR
from ._templates import environment
from .analysis import Text
from .builder import build_document, gather
from .document import Document, Figure, FigureGrid
from .tables import summary_cache

__all__ = ["write_report_html", "render_html", "text_html", "figure_html"]

#: CSS pixels per inch: a figure is shown at its physical size from its dpi.
CSS_DPI = 96.0


def e(value: Any) -> str:
    """``value`` as html text: every ``& < > " '`` escaped; None as an empty string."""
    return "" if value is None else html.escape(str(value), quote=True)


def text_html(text: Text) -> str:
    """Render a :class:`~homoscope.report.analysis.Text` as html, escaping every run (empty runs are left out)."""
    out = []
    for kind, s in text.runs:
        if not s:
            continue
        if kind == "b":
            out.append(f'<strong class="name">{e(s)}</strong>')
        elif kind == "c":
            out.append(f"<code>{e(s)}</code>")
        else:
            out.append(e(s))
    return "".join(out)


@dataclass(frozen=True)
class Embedded:
    """A PNG as a data URI and its display size in CSS pixels."""

    src: str
    width: int
    height: int


#: Layer heatmaps up to this many are embedded in report.html; a study with more shows them from the
#: ``heatmaps/`` folder beside the page (embedded, 120 model pairs make a page of tens of MB).
EMBEDDED_HEATMAPS = 30


def embed(path: str | os.PathLike, link: str | None = None) -> Embedded:
    """Read the PNG at ``path``: a base64 data URI (or, with ``link``, that relative address of the file beside
    the page), shown at its physical size (its dpi against :data:`CSS_DPI`; 1 image pixel per CSS pixel where
    the file records no dpi).

    Raises:
        OSError: the file cannot be read; PIL.UnidentifiedImageError: it is not an image.
    """
    with Image.open(Path(path)) as img:
        (w, h), dpi = img.size, img.info.get("dpi")
    scale = CSS_DPI / float(dpi[0]) if dpi and dpi[0] else 1.0
    src = quote(link) if link is not None else \
        f"data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode('ascii')}"
    return Embedded(src, round(w * scale), round(h * scale))


def _figure_paths(blocks) -> list[str]:
    """The paths of every figure in ``blocks`` (sections, details and grids searched)."""
    found: list[str] = []
    for b in blocks:
        if isinstance(b, FigureGrid):
            found += [f.path for f in b.figures]
        elif isinstance(b, Figure):
            found.append(b.path)
        elif hasattr(b, "blocks"):
            found += _figure_paths(b.blocks)
    return found


def _text_markup(text: Text) -> Markup:
    return Markup(text_html(text))


@cache
def _env() -> Environment:
    return environment("html", {"html": _text_markup})


def figure_html(path: str | os.PathLike, alt: str, caption: Text | str | None = None) -> str:
    """A ``<figure>`` with the PNG at ``path`` embedded as a base64 data URI, shown at its physical size
    (see :func:`embed`) and never wider than its box; ``alt`` and a str caption are escaped.

    Raises:
        OSError / PIL.UnidentifiedImageError: as :func:`embed`.
    """
    img = embed(path)
    cap = _text_markup(caption) if isinstance(caption, Text) else caption
    return str(_env().get_template("blocks.html.j2").module.figure(img.src, alt, img.width, img.height, cap))


def render_html(doc: Document, out_dir: str | os.PathLike) -> str:
    """The html page of ``doc``; figures are read from their paths relative to ``out_dir`` and embedded, except
    the layer heatmaps of a study with more than :data:`EMBEDDED_HEATMAPS`, shown from their files."""
    root = Path(out_dir)
    heatmaps = [p for p in _figure_paths((*doc.head, *doc.sections)) if p.startswith(f"{HEATMAP_DIR}/")]
    linked = len(heatmaps) > EMBEDDED_HEATMAPS

    def show(rel: str) -> Embedded:
        return embed(root / rel, rel if linked and rel.startswith(f"{HEATMAP_DIR}/") else None)

    return _env().get_template("report.html.j2").render(doc=doc, embed=show)


def write_report_html(
    frame: pd.DataFrame, manifest: Mapping[str, Any] | None, out_dir: str | os.PathLike,
    figures: Mapping[str, Sequence[str | os.PathLike]], *, extra: Mapping[str, pd.DataFrame] | None = None,
    measure_info: Callable[[str], Any] | None = None,
) -> Path:
    """Write ``report.html`` into ``out_dir`` (atomically) and return its path.

    The page renders the same document as :func:`~homoscope.report.write_report_md` (see there for its
    sections), with a table of contents and every figure in ``figures`` embedded (the layer heatmaps of a study
    with more than :data:`EMBEDDED_HEATMAPS` are shown from their files beside the page; figures named as
    :func:`~homoscope.report.write_outputs` names them beside what they show; paths absolute or relative
    to ``out_dir``); a figure not in ``figures`` is left out. The page has no script and loads nothing: it
    opens from a file, offline.

    Args:
        frame: the tidy results frame.
        manifest: the study manifest (see :func:`homoscope.report.write_report_md`).
        out_dir: output folder.
        figures: ``{'heatmaps': [...], 'summaries': [...], 'controls': [...], 'agreement': [...]}``.
        extra: optional prediction-agreement frames ``{'probes', 'agreement', 'homogenization'}``.
        measure_info: callable ``name -> dict-like`` describing a measure (default: the manifest's
            ``measures`` entry, else the registry, else a neutral guess).

    Raises:
        ValueError / TypeError: ``frame`` is not a valid results frame, or an extra frame is malformed.
    """
    with summary_cache():
        doc = build_document(gather(frame, manifest, out_dir, measure_info, extra), figures)
    return atomic_write_text(Path(out_dir) / "report.html", render_html(doc, out_dir))
