"""The report as one document: a title, a head, sections of blocks and a footer.

The document holds what the report says, already decided: every section, table row, number and sentence
(numbers as formatted text, sentences as :class:`~homoscope.report.analysis.Text` runs). It holds no markup
and nothing escaped: the markdown and html templates only render it, each escaping data its own way.
:mod:`homoscope.report.builder` builds it from the results.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Union

from ._format import f3
from .analysis import VERDICT_NS, T, Text

__all__ = ["Cell", "Paragraph", "BulletList", "Table", "Figure", "FigureGrid", "CodeBlock", "IndexBox", "Details",
           "FileList", "Section", "Document", "Block", "cell", "num_cell", "score_cell", "header"]


@dataclass(frozen=True)
class Cell:
    """One table cell: its text and how it reads.

    Attributes:
        text: the content.
        numeric: a number (right-aligned).
        bold: emphasised (a score that counts as similarity).
        ns: a score not distinguishable from its permutation null (shown as n.s., never as similarity).
    """

    text: Text
    numeric: bool = False
    bold: bool = False
    ns: bool = False


@dataclass(frozen=True)
class Paragraph:
    """A paragraph; ``style`` is ``''``, ``'lead'`` (the opening summary), ``'note'`` or ``'muted'``."""

    kind: ClassVar[str] = "paragraph"
    text: Text
    style: str = ""


@dataclass(frozen=True)
class BulletList:
    """A bulleted list of sentences; ``style`` names the list (``'findings'``) or is empty."""

    kind: ClassVar[str] = "bullets"
    items: tuple[Text, ...]
    style: str = ""


@dataclass(frozen=True)
class Table:
    """A table: ``header`` (None for a table of facts without one) and rows of cells; a column is numeric
    where its header cell (or, without a header, its first row's cell) says so."""

    kind: ClassVar[str] = "table"
    header: tuple[Cell, ...] | None
    rows: tuple[tuple[Cell, ...], ...]

    @property
    def numeric(self) -> tuple[bool, ...]:
        """Whether each column holds numbers."""
        first = self.header if self.header is not None else (self.rows[0] if self.rows else ())
        return tuple(c.numeric for c in first)


@dataclass(frozen=True)
class Figure:
    """A figure file: its path relative to the output folder, its alt text and an optional caption."""

    kind: ClassVar[str] = "figure"
    path: str
    alt: str
    caption: Text | None = None


@dataclass(frozen=True)
class FigureGrid:
    """Figures shown side by side."""

    kind: ClassVar[str] = "figures"
    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class CodeBlock:
    """Lines of code shown as they are (the commands that reproduce the study)."""

    kind: ClassVar[str] = "code"
    code: str
    language: str = "bash"


@dataclass(frozen=True)
class IndexBox:
    """The homogenization index: ``value`` (``'H = 0.583'``, None where not computed) and the text that
    follows it (interval, pairs, measure, baseline and reading; or why it was not computed)."""

    kind: ClassVar[str] = "index"
    value: str | None
    text: Text


@dataclass(frozen=True)
class Details:
    """Blocks under a short summary line (definitions, configuration), folded where the format can fold."""

    kind: ClassVar[str] = "details"
    summary: Text
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class FileList:
    """Data files beside the report, by name relative to the output folder, after ``label``."""

    kind: ClassVar[str] = "files"
    label: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class Section:
    """A section: ``id`` (an html anchor), title, heading level (2 or 3), blocks (a block may be a
    subsection) and ``toc``, the label in the table of contents (empty: not listed)."""

    kind: ClassVar[str] = "section"
    id: str
    title: Text
    level: int
    blocks: tuple[Block, ...]
    toc: str = ""


Block = Union[Paragraph, BulletList, Table, FigureGrid, CodeBlock, IndexBox, Details, FileList, Section]


@dataclass(frozen=True)
class Document:
    """The whole report: ``title``, ``head`` (blocks under the title), ``sections`` and ``footer``."""

    title: Text
    head: tuple[Block, ...]
    sections: tuple[Section, ...]
    footer: Text

    @property
    def toc(self) -> list[tuple[str, str]]:
        """``(id, label)`` of each section listed in the table of contents."""
        return [(s.id, s.toc) for s in self.sections if s.toc]


def cell(*parts, numeric: bool = False, bold: bool = False, ns: bool = False) -> Cell:
    """A cell from text parts (see :func:`~homoscope.report.analysis.T`)."""
    return Cell(T(*parts), numeric, bold, ns)


def num_cell(text: str, bold: bool = False) -> Cell:
    """A numeric cell holding already formatted ``text``."""
    return Cell(T(text), True, bold)


def score_cell(value, verdict: str, bold: bool = False) -> Cell:
    """A score: numeric, n.s. where ``verdict`` is :data:`~homoscope.report.analysis.VERDICT_NS` (and then
    never bold), else bold where asked."""
    ns = verdict == VERDICT_NS
    return Cell(T(f3(value)), True, bold and not ns, ns)


def header(names: Sequence[str | Text], numeric: Iterable[int] = ()) -> tuple[Cell, ...]:
    """Header cells from names; the columns at the indices in ``numeric`` hold numbers."""
    nums = set(numeric)
    return tuple(Cell(n if isinstance(n, Text) else T(n), k in nums) for k, n in enumerate(names))
