"""User corpora from a file: .txt (one text per line), .jsonl (one JSON object per line) or .csv.

Values that are not data are refused with the file, the line (1-based, as an editor shows it) and the
column, never read as a text, a class or a document:

- .jsonl: a text must be a JSON string (``null`` or a blank string is a blank text, skipped); a label
  or document id a string or a finite number (``null`` is refused). ``NaN``, ``Infinity`` and
  ``-Infinity`` (and numbers too large for a float) are refused in all three columns; the JSON
  *strings* ``"NaN"`` and ``"inf"`` are text like any other.
- .csv: every cell is text. An empty text cell is a blank text (skipped), an empty label or document
  id is refused, and a cell of a named column that reads exactly ``nan``, ``inf`` or ``infinity`` (any
  case, optional sign: how pandas, numpy and R write a missing or infinite float, :data:`NON_FINITE_CELL`)
  is refused; a text that really is "NaN" is kept by giving the corpus as .jsonl. Other spellings
  (``NA``, ``null``, ``None``) are text.
- .txt: each line is taken as written.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path

from .._spelling import typed
from ._corpus import Corpus
from ._text import check_count, check_seed, normalise, sample_indices

SUFFIXES = (".txt", ".jsonl", ".csv")
# the study option that names each column, for messages (named as the user typed it)
_COLUMN_OPTION = {"text": "text_column", "label": "label_column", "document id": "doc_column"}


def _supported() -> str:
    return ", ".join(SUFFIXES)


def check_path(path) -> Path:
    """Return ``path`` as a Path to an existing corpus file with a supported suffix; else ValueError."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(
            f"corpus file {str(path)!r} does not exist; give the path of a {_supported()} file (or 'bbc')"
        )
    if p.is_dir():
        raise ValueError(f"corpus path {str(path)!r} is a folder; give the path of a {_supported()} file")
    if p.suffix.lower() not in SUFFIXES:
        raise ValueError(
            f"corpus file {str(path)!r} has unsupported suffix {p.suffix or '(none)'!r}; supported: {_supported()}"
        )
    return p


def _decode(raw: bytes, shown: str) -> str:
    """Decode UTF-8 (a leading BOM is allowed); report the line and byte offset of the first bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
        at = err.start + bom
        line = raw.count(b"\n", 0, at) + 1
        column = at - (raw.rfind(b"\n", 0, at) + 1)
        raise ValueError(
            f"corpus file {shown!r} is not UTF-8: invalid byte 0x{raw[at]:02x} at line {line}, byte {column + 1} "
            f"of that line (byte offset {at} in the file); re-save the file as UTF-8"
        ) from None


def _lines(text: str) -> list[str]:
    """Split on line ends only (\\n, \\r\\n, \\r), so line numbers match what an editor shows."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line end closes the last line; it does not open a new one
    return lines


def _read_txt(text: str, shown: str, label_column, doc_column):
    if label_column is not None or doc_column is not None:
        raise ValueError(
            f"corpus file {shown!r} is a .txt file with one text per line and no columns; "
            f"drop {typed('label_column')} and {typed('doc_column')}, or give a .jsonl or .csv file"
        )
    rows = []
    for lineno, line in enumerate(_lines(text), start=1):
        rows.append((lineno, line, None, None))
    return rows, None


class _NonFinite:
    """A JSON ``NaN``, ``Infinity`` or ``-Infinity`` literal as written (``json.loads(parse_constant=...)``)."""

    def __init__(self, text: str):
        self.text = text


def _cell(value, what: str, column: str, where: str, shown: str, allow_missing: bool) -> str | None:
    """The string of one JSONL value in a named column. A text must be a JSON string (or null: blank);
    a label or document id a string or a finite number.

    Raises:
        ValueError: naming file, line and column: a missing label or document id (null), a non-finite
            number (``NaN``, ``Infinity``, ``-Infinity``, or a number too large for a float), a number in the
            text column, or a value of another kind (true/false, a list, an object).
    """
    head = f"corpus file {shown!r}: {what} column {column!r} at {where}"
    if value is None:
        if allow_missing:
            return None
        raise ValueError(f"{head} is empty (null); fill it in")
    if isinstance(value, _NonFinite) or (isinstance(value, float) and not math.isfinite(value)):
        written = value.text if isinstance(value, _NonFinite) else repr(value)
        fix = "give the text as a JSON string, or null to skip the record" if what == "text" else (
            "give a string or a finite number")
        raise ValueError(f"{head} holds {written}, a number that is not finite, not a {what}; {fix}")
    if what == "text" and isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"{head} holds the number {value!r}, not a string; write the text as a JSON string "
                         f'("{value!r}") if it is meant, or check text_column')
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        kind = "a string" if what == "text" else "a string or number"
        raise ValueError(f"{head} holds {type(value).__name__} {value!r}; it must be {kind}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _read_jsonl(text: str, shown: str, text_column: str, label_column, doc_column):
    rows = []
    keys_seen: list[str] = []
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_constant=_NonFinite)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"corpus file {shown!r}: line {lineno} is not valid JSON ({err.msg} at column {err.colno}); "
                "give one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"corpus file {shown!r}: line {lineno} is a JSON {type(record).__name__}, not an object; "
                "give one JSON object per line"
            )
        for key in record:
            if key not in keys_seen:
                keys_seen.append(key)
        where = f"line {lineno}"
        if text_column not in record:
            raise ValueError(
                f"corpus file {shown!r} has no text column {text_column!r} at {where}; "
                f"columns found: {', '.join(map(repr, record)) or '(none)'}; name the text column with "
                f"{typed('text_column')}"
            )
        for column, what in ((label_column, "label"), (doc_column, "document id")):
            if column is not None and column not in record:
                raise ValueError(
                    f"corpus file {shown!r} has no {what} column {column!r} at {where}; "
                    f"columns found: {', '.join(map(repr, record)) or '(none)'}; name the right one with "
                    f"{typed(_COLUMN_OPTION[what])}"
                )
        body = _cell(record[text_column], "text", text_column, where, shown, allow_missing=True)
        label = doc = None
        if label_column is not None:
            label = _cell(record[label_column], "label", label_column, where, shown, allow_missing=False)
        if doc_column is not None:
            doc = _cell(record[doc_column], "document id", doc_column, where, shown, allow_missing=False)
        rows.append((lineno, body or "", label, doc))
    return rows, keys_seen


#: A CSV cell that reads as a non-finite number (any case, optional sign): how pandas, numpy and R write a
#: missing or infinite float (``str(float("nan"))`` is ``'nan'``), so a table of numbers in disguise.
NON_FINITE_CELL = re.compile(r"[+-]?(nan|inf|infinity)", re.IGNORECASE)


def _check_csv_cells(values: list[str], position: dict, columns: dict, lineno: int, shown: str) -> None:
    """Raise a ValueError naming file, line and column for a named cell of a CSV row that reads as a
    non-finite number (:data:`NON_FINITE_CELL`)."""
    for what, at in position.items():
        cell = values[at].strip()
        if NON_FINITE_CELL.fullmatch(cell):
            if what == "text":
                fix = ("leave the cell empty to skip the row; if the text is meant, give the corpus as a .jsonl "
                       f'file, where "{cell}" is a JSON string')
            else:
                fix = "fill it in, or drop the row"
            raise ValueError(
                f"corpus file {shown!r}: {what} column {columns[what]!r} reads {cell!r} in the row at line "
                f"{lineno}, a missing or non-finite number as pandas and numpy write one, not a {what}; {fix}"
            )


def _read_csv(text: str, shown: str, text_column: str, label_column, doc_column):
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return [], []
    except csv.Error as err:
        raise ValueError(f"corpus file {shown!r}: the header is not valid CSV ({err}); fix line 1") from None
    header = [h.strip() for h in header]
    dup = [h for h, c in Counter(header).items() if c > 1]
    if dup:
        raise ValueError(f"corpus file {shown!r} repeats column name {dup[0]!r} in its header; name columns uniquely")
    found = ", ".join(map(repr, header))
    position, columns = {}, {"text": text_column, "label": label_column, "document id": doc_column}
    for column, what in ((text_column, "text"), (label_column, "label"), (doc_column, "document id")):
        if column is None:
            continue
        if column not in header:
            hint = f"; name the right one with {typed(_COLUMN_OPTION[what])}"
            raise ValueError(f"corpus file {shown!r} has no {what} column {column!r}; columns found: {found}{hint}")
        position[what] = header.index(column)
    rows = []
    previous_end = reader.line_num
    try:
        for values in reader:
            lineno, previous_end = previous_end + 1, reader.line_num  # the line the row starts on
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise ValueError(
                    f"corpus file {shown!r}: the row at line {lineno} has {len(values)} fields but the header "
                    f"has {len(header)}; quote fields that contain commas"
                )
            _check_csv_cells(values, position, columns, lineno, shown)
            label = values[position["label"]] if "label" in position else None
            doc = values[position["document id"]] if "document id" in position else None
            for value, what, column in ((label, "label", label_column), (doc, "document id", doc_column)):
                if value is not None and not value.strip():
                    raise ValueError(
                        f"corpus file {shown!r}: {what} column {column!r} is empty in the row at line {lineno}; "
                        "fill it in"
                    )
            rows.append((lineno, values[position["text"]], label, doc))
    except csv.Error as err:
        raise ValueError(f"corpus file {shown!r}: invalid CSV near line {reader.line_num} ({err})") from None
    return rows, header


# characters that show nothing: controls, format characters (zero-width, byte order mark), separators
_INVISIBLE = {"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"}


def _visible(text: str) -> bool:
    """Whether ``text`` holds a character that shows (a text of NULs, BOMs or zero-width spaces is blank)."""
    return any(unicodedata.category(ch) not in _INVISIBLE for ch in text)


def _non_blank(rows: list[tuple], text: str, shown: str, text_column: str) -> list[tuple]:
    """Normalise the text of every ``(line, text, label, doc)`` record and drop blank ones (nothing visible:
    :func:`_visible`).

    Raises a ValueError saying why the file holds no text when none is left, or naming the line of a text
    that is not valid Unicode (a lone surrogate).
    """
    kept = [(lineno, normalise(body), label, doc) for lineno, body, label, doc in rows]
    for lineno, body, _label, _doc in kept:
        try:
            body.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate escape (JSON "\ud800"): no character at all
            raise ValueError(f"corpus file {shown!r}: the text at line {lineno} holds {body[err.start]!r}, half of a "
                             "UTF-16 surrogate pair and not a character; fix the escape in the file") from None
    kept = [r for r in kept if _visible(r[1])]
    if not kept:
        if not text:
            what = "is empty"
        elif not text.strip():
            what = "holds only blank lines"
        elif not rows:
            what = "has a header but no data rows"
        else:
            what = f"has only blank texts ({len(rows)} records, all blank in column {text_column!r})"
        raise ValueError(f"corpus file {shown!r} {what}; give at least one non-blank text")
    return kept


def _read_file(p: Path, shown: str, text_column: str, label_column, doc_column) -> tuple[list[tuple], dict]:
    """Read, decode and parse the corpus file ``p``.

    Returns its non-blank ``(line, text, label, doc)`` records and the meta that describes the file.
    """
    raw = p.read_bytes()
    text = _decode(raw, shown)
    fmt = p.suffix.lower().lstrip(".")
    if fmt == "txt":
        rows, columns = _read_txt(text, shown, label_column, doc_column)
    elif fmt == "jsonl":
        rows, columns = _read_jsonl(text, shown, text_column, label_column, doc_column)
    else:
        rows, columns = _read_csv(text, shown, text_column, label_column, doc_column)
    kept = _non_blank(rows, text, shown, text_column)
    texts = [r[1] for r in kept]
    meta = {
        "path": shown,
        "format": fmt,
        "file_sha256": hashlib.sha256(raw).hexdigest(),
        "columns": columns,
        "text_column": None if fmt == "txt" else text_column,
        "label_column": label_column,
        "doc_column": doc_column,
        "records": len(rows),
        "blank_skipped": len(rows) - len(kept),
        "duplicate_texts": len(texts) - len(set(texts)),
        "texts_available": len(texts),
    }
    return kept, meta


def _record_ids(kept: list[tuple]) -> list[str]:
    """Row ids of ``(line, text, label, doc)`` records: ``'<line>'``, or ``'<doc>#<k>'`` with a document id."""
    ids: list[str] = []
    per_doc: Counter = Counter()
    for lineno, _, _, doc in kept:
        if doc is None:
            ids.append(str(lineno))
        else:
            ids.append(f"{doc}#{per_doc[doc]}")
            per_doc[doc] += 1
    return ids


def load_file(
    path,
    *,
    text_column: str = "text",
    label_column: str | None = None,
    doc_column: str | None = None,
    sentences: int | None = None,
    seed: int = 0,
    name: str | None = None,
) -> Corpus:
    """Load a corpus from a UTF-8 text file; each line (.txt), JSON object (.jsonl) or row (.csv) is one text.

    Texts are taken as given (not split into sentences), with whitespace normalised (NFC, runs of
    whitespace -> one space); blank texts are skipped and counted in ``meta['blank_skipped']``.
    Duplicate texts are kept and counted in ``meta['duplicate_texts']``.

    Parameters
    ----------
    path : str or Path
        A ``.txt`` (one text per line, no labels), ``.jsonl`` (one object per line) or ``.csv``
        (header row first) file.
    text_column, label_column, doc_column : str, str or None, str or None
        Column (jsonl key or csv header) holding the text, the optional label and the optional
        document id. Values are read as strings; values that are not data (``NaN``, ``Infinity``,
        a number for a text) are refused by the module's rule.
    sentences : int or None
        How many texts to keep (default None: all); drawn with ``numpy.random.default_rng(seed)``
        without replacement and kept in file order. More than available keeps all with a
        ``UserWarning``.
    seed : int
        Sampling seed, >= 0.
    name : str or None
        Corpus name; default the file's stem.

    Returns
    -------
    Corpus
        ids are ``'<line>'`` (the 1-based line a text starts on) or, with ``doc_column``,
        ``'<doc>#<k>'`` (k-th text of that document in file order, from 0); labels and doc_ids are
        None unless their column is named; ``meta`` records the file hash and counts.

    Raises
    ------
    ValueError
        The path does not exist, is a folder or has another suffix; the file is not UTF-8 (the
        message gives line and byte offset); it holds no non-blank text; a named column is missing
        (the message lists the columns found) or empty; a .jsonl line is not a JSON object; a value
        that is not data (module docstring); a .csv row has the wrong number of fields; ``sentences``
        or ``seed`` is invalid.
    """
    p = check_path(path)
    if not isinstance(text_column, str) or not text_column:
        raise ValueError(f"{typed('text_column', text_column)} must be a non-empty column name")
    k = check_count(sentences)
    s = check_seed(seed)
    kept, meta = _read_file(p, str(path), text_column, label_column, doc_column)
    texts = [r[1] for r in kept]
    ids = _record_ids(kept)
    corpus_name = name if name is not None else p.stem
    chosen, sampled = sample_indices(len(texts), k, s, corpus_name)
    meta.update({"sentences_requested": k, "sentences": len(chosen), "seed": s, "sampled": sampled})
    return Corpus(
        name=corpus_name, source=f"file {p.name}", texts=[texts[i] for i in chosen], ids=[ids[i] for i in chosen],
        labels=None if label_column is None else [kept[i][2] for i in chosen],
        doc_ids=None if doc_column is None else [kept[i][3] for i in chosen], meta=meta,
    )
