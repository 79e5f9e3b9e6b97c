"""The markdown rendering of the report: ``report.md``, with links to its figure and data files.

Model names, labels, licences and notes are data and may hold any character; the template passes them
through :func:`escape_md` (or :func:`text_md` for a sentence), and they are never used raw in file names.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
from jinja2 import Environment

from .._paths import atomic_write_text
from ._common import (
    controls_relpath,
    dendrogram_relpath,
    heatmap_relpath,
    probes_relpath,
    summary_relpath,
)
from ._templates import environment
from .analysis import AGREEMENT_LABELS, Text
from .builder import build_document, gather
from .document import Document
from .tables import summary_cache

__all__ = ["write_report_md", "render_markdown", "escape_md", "text_md", "heatmap_relpath", "summary_relpath",
           "dendrogram_relpath", "controls_relpath", "probes_relpath", "AGREEMENT_LABELS"]

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>|#!~&$])")
_MD_LIGHT = re.compile(r"([\\`*_\[\]<>|$~#&])")
_LEADING = re.compile(r"^(\s*)([+\-]|\d{1,9}[.)])(?=\s|$)")
_RULE = re.compile(r"^(\s*)([-=+])")  # "---" is a rule and "===" a heading underline at the start of a line


def escape_md(text: Any) -> str:
    """Escape ``text`` for markdown prose and table cells.

    Backslash-escapes every character markdown (and GitHub's flavour: tables, math, html) could read
    as syntax: ``\\ ` * _ { } [ ] ( ) < > | # ! ~ & $``, plus a leading list marker (``-``, ``+``,
    ``1.``). Newlines and tabs become spaces, so a value stays on its table row.
    ``None`` becomes an empty string.
    """
    if text is None:
        return ""
    s = re.sub(r"[\r\n\t]", " ", str(text))
    s = _MD_SPECIAL.sub(r"\\\1", s)
    m = _LEADING.match(s)
    if m:  # "- x", "+ x", "1. x" would start a list
        s = s[: m.end() - 1] + "\\" + s[m.end() - 1:]
    elif _RULE.match(s):
        s = _RULE.sub(lambda r: r.group(1) + "\\" + r.group(2), s, count=1)
    return s


def _code(text: Any) -> str:
    """An inline code span safe inside a table cell (``|`` escaped, fence longer than any backtick run)."""
    s = " ".join(str(text).split())
    if not s:
        return ""
    run = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (run + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s.replace('|', chr(92) + '|')}{pad}{fence}"


def _light(s: str) -> str:
    """Escape fixed wording for markdown: only the characters that would start markup."""
    return _MD_LIGHT.sub(r"\\\1", re.sub(r"[\r\n\t]", " ", str(s)))


def text_md(text: Text) -> str:
    """Render a :class:`~homoscope.report.analysis.Text` as markdown: data escaped with
    :func:`escape_md` (bold for model names), code as inline code, fixed wording lightly escaped."""
    out = []
    for kind, s in text.runs:
        if not s:
            continue
        if kind == "b":
            out.append(f"**{escape_md(s)}**")
        elif kind == "c":
            out.append(_code(s))
        elif kind == "d":
            out.append(escape_md(s))
        else:
            out.append(_light(s))
    return "".join(out)


def _link(path: str) -> str:
    """A relative path as a markdown link target (``/`` separators, other characters percent-encoded)."""
    return quote(path.replace(os.sep, "/"), safe="/-_.~")


def _fence(code: str) -> str:
    """A code fence longer than any run of backticks in ``code`` (at least three)."""
    run = max((len(x) for x in re.findall(r"`{3,}", code)), default=2)
    return "`" * max(3, run + 1)


@cache
def _env() -> Environment:
    return environment("md", {"md": text_md, "escape_md": escape_md, "link": _link, "fence": _fence})


def render_markdown(doc: Document) -> str:
    """The markdown text of ``doc`` (ends with one newline)."""
    text = _env().get_template("report.md.j2").render(doc=doc)
    return text.rstrip() + "\n"


def write_report_md(
    frame: pd.DataFrame, manifest: Mapping[str, Any], out_dir: str | os.PathLike,
    figures: Mapping[str, Sequence[str | os.PathLike]], *, measure_info: Callable[[str], Any] | None = None,
    extra: Mapping[str, pd.DataFrame] | None = None,
) -> Path:
    """Write ``report.md`` into ``out_dir`` (atomically) and return its path.

    The report (built by :func:`homoscope.report.builder.build_document`, the same document as
    ``report.html``): title; a summary paragraph (the study in one sentence, then per measure the most
    and least alike pair with values); the data files beside it; findings (the homogenization index, plain
    sentences citing numbers and intervals, definitions); for a comparison
    (``manifest['study']['pairs'] == 'first-vs-rest'``) the new model against each reference, layer by
    layer, with a verdict; the study (corpus, models, measures, configuration, the commands to reproduce
    and to rebuild the report); model-by-model similarity per measure (figures and table); the
    layer-by-layer heatmaps; the controls (random-init baseline, permutation null, p and q, bootstrap
    intervals; each pair's seed ceiling where some recipe has two or more seeds); the seed ceiling (each
    recipe's ceiling and the pairs by family, only where some recipe has two or more seeds); prediction
    agreement and outcome homogenization (from ``extra``; a one-line note where absent); any other figure;
    provenance (versions, fingerprints, random-init controls, timings, warnings).

    Args:
        frame: the tidy results frame.
        manifest: the study manifest (keys ``study``, ``corpus``, ``models``, ``versions``, ``timings``,
            ``warnings``, ``commands``, ``created``; any may be missing).
        out_dir: output folder; figure links are written relative to it.
        figures: ``{'heatmaps': [...], 'summaries': [...], ...}`` paths of figures already written
            (absolute, relative to the working folder, or relative to ``out_dir``); figures named as
            :func:`~homoscope.report.write_outputs` names them are placed next to their measure, any other
            figure in a section of its own. Only figures in ``figures`` are linked.
        measure_info: callable ``name -> dict-like`` describing a measure (default:
            ``manifest['measures'][name]`` where recorded, else the registry, else a neutral guess).
        extra: optional prediction-agreement frames ``{'probes', 'agreement', 'homogenization'}``
            (see :func:`homoscope.report.write_outputs`).

    Raises:
        ValueError / TypeError: ``frame`` is not a valid results frame, or an extra frame is malformed.
    """
    with summary_cache():
        doc = build_document(gather(frame, manifest, out_dir, measure_info, extra), figures)
    return atomic_write_text(Path(out_dir) / "report.md", render_markdown(doc))
