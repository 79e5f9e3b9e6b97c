"""The markdown report: numbers, study description, figures and provenance in one ``report.md``.

Model names, labels, licences and notes are data and may hold any character; they are escaped with
:func:`escape_md` wherever they appear in text or tables, and never used raw in file names.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from homoscope._paths import safe_name

from ._common import (
    rows_used,
    UNIT_PLURAL,
    atomic_write_text,
    check_frame,
    file_stems,
    first_value,
    has_controls,
    measures_of,
    model_order,
    pairs_of,
)
from ._measures import MeasureInfo, manifest_measure_info, resolve_measure_info
from .analysis import (
    p_txt,
    INDEX_DEFINITION,
    MEAN_INTERVAL_RULE,
    NULL_RULE,
    VERDICT_NS,
    CompareView,
    Text,
    agreement_rows,
    compare_view,
    controls_table,
    findings,
    homogenization_index,
    index_reading,
    normalize_extra,
    p_txt,
    probe_best,
)
from .tables import summary_cache, summary_table

__all__ = ["write_report_md", "escape_md", "text_md", "heatmap_relpath", "summary_relpath", "dendrogram_relpath",
           "controls_relpath", "probes_relpath", "AGREEMENT_LABELS"]

#: What each pairwise prediction-agreement measure is, for table notes.
AGREEMENT_LABELS = {
    "agreement": "share of identical predictions",
    "cohen_kappa": "agreement beyond chance (Cohen 1960)",
    "error_overlap": "shared errors / errors of either model (Jaccard)",
    "error_overlap_jaccard": "shared errors / errors of either model (Jaccard)",
    "error_overlap_conditional": "P(second model wrong | first model wrong)",
    "p_b_wrong_given_a_wrong": "P(second model wrong | first model wrong)",
    "jsd": "Jensen-Shannon divergence of predictive distributions (bits; lower = more alike)",
}

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>|#!~&$])")
_LEADING = re.compile(r"^(\s*)([+\-]|\d{1,9}[.)])(?=\s|$)")


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
    if m:  # "- x", "+ x", "= x", "1. x" would start a list or heading
        s = s[: m.end() - 1] + "\\" + s[m.end() - 1:]
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


def _link(path: str) -> str:
    return quote(path.replace(os.sep, "/"), safe="/-_.~")


def heatmap_relpath(measure: str, model_a: str, model_b: str, stems: Mapping[str, str]) -> str:
    """Relative path of a layer heatmap: ``heatmaps/<measure>__<a>__vs__<b>.png`` (safe names)."""
    return f"heatmaps/{safe_name(measure, max_len=40)}__{stems[model_a]}__vs__{stems[model_b]}.png"


def summary_relpath(measure: str, how: str) -> str:
    """Relative path of a model-by-model matrix: ``summary_<measure>_<how>.png``."""
    return f"summary_{safe_name(measure, max_len=40)}_{how}.png"


def dendrogram_relpath(measure: str) -> str:
    """Relative path of a dendrogram: ``dendrogram_<measure>.png``."""
    return f"dendrogram_{safe_name(measure, max_len=40)}.png"


def controls_relpath(measure: str) -> str:
    """Relative path of a controls figure: ``controls_<measure>.png``."""
    return f"controls_{safe_name(measure, max_len=40)}.png"


def probes_relpath() -> str:
    """Relative path of the probe-accuracy figure: ``probes.png``."""
    return "probes.png"


_MD_LIGHT = re.compile(r"([\\`*_\[\]<>|$~#&])")


def text_md(text: Text) -> str:
    """Render a :class:`~homoscope.report.analysis.Text` as markdown: data escaped with
    :func:`escape_md` (bold for model names), code as inline code, fixed wording lightly escaped."""
    out = []
    for kind, s in text.runs:
        if kind == "b":
            out.append(f"**{escape_md(s)}**")
        elif kind == "c":
            out.append(_code(s))
        elif kind == "d":
            out.append(escape_md(s))
        else:
            out.append(_light(s))
    return "".join(out)


def _light(s: str) -> str:
    """Escape fixed wording for markdown: only the characters that would start markup."""
    return _MD_LIGHT.sub(r"\\\1", re.sub(r"[\r\n\t]", " ", str(s)))


def _fmt(v: Any, digits: int = 3) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "\u2013"
    return f"{f:.{digits}f}" if math.isfinite(f) else "\u2013"


def _int(v: Any) -> str:
    try:
        if v is None or pd.isna(v):
            return "\u2013"
        return f"{int(v):,}"
    except (TypeError, ValueError):
        return escape_md(v)


def _params(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return escape_md(v) if v not in (None, "") else "\u2013"
    if not math.isfinite(f):
        return "\u2013"
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if f >= div:
            return f"{f / div:.3g}{suf}"
    return f"{int(f)}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str | None = None) -> list[str]:
    align = align or "l" * len(header)
    sep = {"l": "---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep[a] for a in align) + " |"]
    out += ["| " + " | ".join(str(c) if str(c) else " " for c in r) + " |" for r in rows]
    return out


def _value(v: Any) -> str:
    if isinstance(v, str):
        return escape_md(v)
    if v is None:
        return "\u2013"
    try:
        return escape_md(json.dumps(v, default=str, ensure_ascii=False))
    except (TypeError, ValueError):
        return escape_md(str(v))


def _pair_txt(a: str, b: str, info: MeasureInfo) -> str:
    sep = " \u2192 " if not info.symmetric else " and "
    return f"**{escape_md(a)}**{sep}**{escape_md(b)}**"


def _summary_sentence(table: pd.DataFrame, info: MeasureInfo) -> str:
    """One or two sentences on a measure: most and least alike pair at their best layers, final range."""
    name = f"`{info.name}`" if "`" not in info.name else escape_md(info.name)
    ok = table[np.isfinite(table["best"].astype(float))]
    if ok.empty:
        return f"Under {name} no pair has a finite value."
    hi = info.higher_is_more_alike
    top = ok.loc[ok["best"].idxmax() if hi else ok["best"].idxmin()]
    low = ok.loc[ok["best"].idxmin() if hi else ok["best"].idxmax()]

    def at(r: pd.Series) -> str:
        txt = f"{_fmt(r['best'])} at layers {_int(r['best_layer_a'])} and {_int(r['best_layer_b'])}"
        if math.isfinite(float(r["best_ci_low"])) and math.isfinite(float(r["best_ci_high"])):
            txt += f", CI {_fmt(r['best_ci_low'])}\u2013{_fmt(r['best_ci_high'])}"
        return txt

    lead = f"Under {name}"
    if len(ok) == 1:
        s = f"{lead}, the one pair, {_pair_txt(top['model_a'], top['model_b'], info)}, reaches {at(top)} at best"
    else:
        s = (f"{lead}, the most alike pair is {_pair_txt(top['model_a'], top['model_b'], info)} "
             f"({at(top)}) and the least alike is {_pair_txt(low['model_a'], low['model_b'], info)} "
             f"({at(low)}), comparing each pair at its best-matching layers")
    if len(ok) > 2:
        s += f"; averaged over the {len(ok)} pairs, the best value is {_fmt(ok['best'].mean())}"
    fin = table[np.isfinite(table["final"].astype(float))]
    if len(fin) > 1:
        s += (f"; final layer against final layer, values run from {_fmt(fin['final'].min())} to "
              f"{_fmt(fin['final'].max())}")
    elif len(fin) == 1:
        s += f"; final layer against final layer it is {_fmt(fin['final'].iloc[0])}"
    return s + "."


def write_report_md(
    frame: pd.DataFrame, manifest: Mapping[str, Any], out_dir: str | os.PathLike,
    figures: Mapping[str, Sequence[str | os.PathLike]], *, measure_info: Callable[[str], Any] | None = None,
    extra: Mapping[str, pd.DataFrame] | None = None,
) -> Path:
    """Write ``report.md`` into ``out_dir`` (atomically) and return its path.

    Sections: title; a summary paragraph generated from the numbers (most and least alike pair per
    measure with values); findings (plain sentences citing numbers and intervals, the homogenization
    index with its definition); for a comparison (``manifest['study']['pairs'] == 'first-vs-rest'``) the
    new model against each reference, layer by layer, with a verdict; the study (corpus with n and
    labels, unit, pooling, configuration, a models table with architecture, kind, blocks, width,
    parameters, licence and notes; the measures with their references; the commands to reproduce and to
    rebuild the report); per measure the summary
    figures and summary table; the layer-by-layer heatmaps; the controls (random-init baseline,
    permutation null, p and q, bootstrap intervals); prediction agreement and outcome homogenization
    (from ``extra``; a one-line note where absent); provenance: timings per stage, versions,
    fingerprints and the warnings raised during the run.

    Args:
        frame: the tidy results frame.
        manifest: the study manifest (keys ``study``, ``corpus``, ``models``, ``versions``, ``timings``,
            ``warnings``, ``commands``, ``created``; any may be missing).
        out_dir: output folder; figure links are written relative to it.
        figures: ``{'heatmaps': [...], 'summaries': [...], ...}`` paths of figures already written
            (absolute, relative to the working folder, or relative to ``out_dir``); heatmaps and
            summaries named as :func:`write_outputs` names them are placed next to their
            measure, any other figure is listed at the end. Only figures in ``figures`` are linked.
        measure_info: callable ``name -> dict-like`` describing a measure (default:
            ``manifest['measures'][name]`` where recorded, else the registry, else the built-in table).
        extra: optional prediction-agreement frames ``{'probes', 'agreement', 'homogenization'}``
            (see :func:`homoscope.report.write_outputs`).

    Raises:
        ValueError / TypeError: ``frame`` is not a valid results frame, or an extra frame is malformed.
    """
    with summary_cache():
        return _write_report_md(frame, manifest, out_dir, figures, measure_info, extra)


def _write_report_md(frame, manifest, out_dir, figures, measure_info, extra) -> Path:
    check_frame(frame)
    extra = normalize_extra(extra)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = manifest or {}
    measure_info = measure_info or manifest_measure_info(manifest)
    study = dict(manifest.get("study") or {})
    corpus = dict(manifest.get("corpus") or {})
    model_meta = [dict(m) for m in (manifest.get("models") or []) if isinstance(m, Mapping)]
    models = model_order(frame, [str(m.get("name")) for m in model_meta if m.get("name") is not None])
    frame_models = set(model_order(frame))
    stems = file_stems(sorted(frame_models))
    measures = measures_of(frame)
    infos = {m: resolve_measure_info(m, measure_info) for m in measures}
    tables = {m: summary_table(frame, m, measure_info=lambda _n, i=infos[m]: i) for m in measures}

    # figures given, by resolved path, so that each can be placed where it belongs
    given: dict[Path, Path] = {}
    for paths in figures.values():
        for p in paths:
            p = Path(p)
            if not p.is_absolute() and not p.exists():
                p = out / p  # relative to out_dir rather than to the working folder
            given[p.resolve()] = p
    placed: set[Path] = set()

    def fig_link(rel: str, alt: str) -> str | None:
        key = (out / rel).resolve()
        if key not in given:
            return None
        placed.add(key)
        return f"![{escape_md(alt)}]({_link(rel)})"

    unit = study.get("unit") or (first_value(frame["unit"]) if "unit" in frame else None)
    n_rows, n_note = rows_used(frame)
    n_rows = n_rows if n_rows is not None else corpus.get("n")
    lines: list[str] = []
    title_corpus = f" on {escape_md(corpus['name'])}" if corpus.get("name") else ""
    view = compare_view(frame, manifest, infos)
    if view is not None:
        refs = len(view.references)
        lines += [f"# homoscope comparison: {escape_md(view.new)} against {refs} reference{'s' if refs != 1 else ''}",
                  ""]
    else:
        lines += [f"# homoscope report: {len(models)} models{title_corpus}", ""]

    # summary paragraph
    intro = (f"This report compares {len(models)} models ({', '.join(escape_md(m) for m in models)})"
             f" layer by layer")
    if n_rows is not None:
        intro += f" on n = {_int(n_rows)} {UNIT_PLURAL.get(str(unit), escape_md(unit or 'rows'))}"
    if corpus.get("name"):
        intro += f" from {escape_md(corpus['name'])}"
    if study.get("pooling") and str(unit) == "sentence":
        intro += f" ({escape_md(study['pooling'])} pooling)"
    intro += f", with {len(measures)} measure{'s' if len(measures) != 1 else ''}."
    lines += [" ".join([intro] + [_summary_sentence(tables[m], infos[m]) for m in measures]), ""]
    if manifest.get("created"):
        lines += [f"*Created {escape_md(manifest['created'])}.*", ""]
    outputs = [(n, n) for n in ("report.html", "similarity.csv", "similarity.parquet", "summary.csv", "manifest.json",
                                "probes.csv", "agreement.csv", "homogenization.csv")
               if (out / n).is_file()]
    if outputs:
        lines += ["Data: " + ", ".join(f"[{escape_md(t)}]({_link(p)})" for t, p in outputs) + ".", ""]

    # findings
    index = homogenization_index(frame, manifest, infos)
    lines += ["## Findings", ""]
    if index.computed:
        iv = (f"interval {_fmt(index.low)}\u2013{_fmt(index.high)}" if math.isfinite(index.low)
              else "no interval (no bootstrap)")
        lines += [f"**Homogenization index H = {_fmt(index.value)}** ({iv}; {index.n_pairs} model pair"
                  f"{'s' if index.n_pairs != 1 else ''}; primary measure {_code(index.measure)}; "
                  f"{_light(index.note)}). {_light(index_reading(index.value, index.baseline))}", ""]
    else:
        lines += [f"Homogenization index: {_light(index.note)}.", ""]
    lines += [f"- {text_md(t)}" for t in findings(frame, manifest, infos, extra, index=index, include_index=False)]
    lines += ["", f"*Definitions.* {_light(INDEX_DEFINITION)} {_light(MEAN_INTERVAL_RULE)} {_light(NULL_RULE)}", ""]
    if view is not None:
        lines += _compare_md(view, infos)

    # study
    lines += ["## Study", ""]
    lines += ["### Corpus", ""]
    if corpus:
        facts = []
        if corpus.get("name"):
            facts.append(f"**{escape_md(corpus['name'])}**")
        if corpus.get("source"):
            facts.append(f"source: {escape_md(corpus['source'])}")
        if corpus.get("n") is not None:
            facts.append(f"n = {_int(corpus['n'])} texts")
        if corpus.get("n_docs") is not None:
            facts.append(f"{_int(corpus['n_docs'])} documents")
        lines += ["; ".join(facts) + ".", ""]
    else:
        lines += ["No corpus description in the manifest.", ""]
    unit_line = [f"unit: **{escape_md(unit)}**" if unit else None,
                 f"pooling: **{escape_md(study['pooling'])}**" if study.get("pooling") else None,
                 f"max length: {_int(study['max_length'])} tokens" if study.get("max_length") else None,
                 (f"n per score: {_int(n_rows)}" + (f" ({escape_md(n_note)})" if n_note else ""))
                 if n_rows is not None else None,
                 f"dtype: {escape_md(study['dtype'])}" if study.get("dtype") else None,
                 f"device: {escape_md(manifest.get('device') or study.get('device'))}"
                 if manifest.get("device") or study.get("device") else None]
    if any(unit_line):
        lines += ["Representation: " + "; ".join(x for x in unit_line if x) + ".", ""]
    labels = corpus.get("labels") or {}
    if isinstance(labels, Mapping) and labels:
        items = sorted(labels.items(), key=lambda kv: (-_num(kv[1]), str(kv[0])))
        shown = items[:20]
        lines += ["Labels:", ""]
        lines += _table(["label", "count"], [[escape_md(k), _int(v)] for k, v in shown], "lr")
        if len(items) > len(shown):
            lines += [f"| \u2026 {len(items) - len(shown)} more | |"]
        lines += [""]
    meta = corpus.get("meta") or {}
    if isinstance(meta, Mapping) and meta:
        lines += _table(["corpus detail", "value"], [[escape_md(k), _value(v)] for k, v in meta.items()])
        lines += [""]
    if study:
        lines += ["### Configuration", ""]
        lines += _table(["setting", "value"], [[escape_md(k), _value(v)] for k, v in study.items()])
        lines += [""]

    lines += ["### Models", ""]
    meta_by_name = {str(m.get("name")): m for m in model_meta}
    header = ["model", "architecture", "kind", "blocks", "width", "parameters", "dtype", "last layer normed",
              "license", "notes"]
    rows = []
    for name in models:
        m = meta_by_name.get(name, {})
        fn = m.get("final_norm_in_last")
        rows.append([
            f"**{escape_md(name)}**", escape_md(m.get("architecture") or "\u2013"),
            escape_md(m.get("kind") or "\u2013"),
            _int(m.get("blocks")), _int(m.get("width")), _params(m.get("n_params")),
            escape_md(m.get("dtype") or "\u2013"), "\u2013" if fn is None else ("yes" if fn else "no"),
            escape_md(m.get("license") or "\u2013"), escape_md(m.get("notes") or ""),
        ])
    lines += _table(header, rows, "lllrrrllll") + [""]

    lines += ["### Measures", ""]
    rows = []
    for m in measures:
        info = infos[m]
        lo, hi = info.value_range
        rng = f"{_bound(lo)} to {_bound(hi)}"
        if info.display_range is not None and info.display_range != info.value_range:
            rng += f" (shown {_bound(info.display_range[0])} to {_bound(info.display_range[1])})"
        rows.append([f"`{m}`" if "`" not in m else escape_md(m), info.kind,
                     "higher" if info.higher_is_more_alike else "lower", rng,
                     "yes" if info.symmetric else "no (both directions)", escape_md(info.reference or "\u2013"),
                     escape_md(info.description)])
    lines += _table(["measure", "kind", "more alike", "range", "symmetric", "reference", "description"], rows)
    lines += ["", "Layer 0 is the embedding output; layer i is the output of block i. Relative depth = "
              "layer / last layer.", ""]
    commands = [str(c) for c in (manifest.get("commands") or []) if str(c).strip()]
    if commands:
        lines += ["### Reproduce", ""]
        body = "\n".join(commands)
        run = max((len(x) for x in re.findall(r"`{3,}", body)), default=2)
        fence = "`" * max(3, run + 1)
        lines += [f"{fence}bash", body, fence, ""]
        lines += ["Rebuild this report from the results folder, without any model: `homoscope report FOLDER`.", ""]

    # results per measure
    lines += ["## Results", ""]
    for m in measures:
        info, table = infos[m], tables[m]
        lines += [f"### {escape_md(m)}", ""]
        links = [fig_link(summary_relpath(m, "best"), f"{m}: best layer pair"),
                 fig_link(summary_relpath(m, "final"), f"{m}: final layer vs final layer"),
                 fig_link(dendrogram_relpath(m), f"{m}: models clustered")]
        links = [x for x in links if x]
        if links:
            lines += ["\n".join(links), ""]
        ctable = controls_table(frame, m, info)
        has_ci = np.isfinite(table["best_ci_low"].astype(float)).any()
        has_p = np.isfinite(table["best_p_value"].astype(float)).any()
        arrow = " \u2192 " if not info.symmetric else " vs "
        header = ["pair", "best", "layers (a, b)", "relative depth (a, b)"]
        header += ["CI at best"] if has_ci else []
        header += ["p at best"] if has_p else []
        header += ["final", "mean", "n", "d (a, b)"]
        rows = []
        for r, c in zip(table.itertuples(index=False), ctable.itertuples(index=False), strict=True):
            best_txt = f"{_fmt(r.best)} (n.s.)" if c.best_verdict == VERDICT_NS else f"**{_fmt(r.best)}**"
            row = [f"{escape_md(r.model_a)}{arrow}{escape_md(r.model_b)}", best_txt,
                   f"{_int(r.best_layer_a)} / {r.layers_a - 1}, {_int(r.best_layer_b)} / {r.layers_b - 1}",
                   f"{_fmt(r.best_depth_a, 2)}, {_fmt(r.best_depth_b, 2)}"]
            if has_ci:
                row.append(f"{_fmt(r.best_ci_low)}\u2013{_fmt(r.best_ci_high)}"
                           if math.isfinite(float(r.best_ci_low)) else "\u2013")
            if has_p:
                row.append(p_txt(r.best_p_value))
            final_txt = f"{_fmt(r.final)} (n.s.)" if c.final_verdict == VERDICT_NS else _fmt(r.final)
            row += [final_txt, _fmt(r.mean), _int(r.n), f"{_int(r.d_a)}, {_int(r.d_b)}"]
            rows.append(row)
        align = "lrll" + ("r" if has_ci else "") + ("r" if has_p else "") + "rrrr"
        lines += _table(header, rows, align)
        best_word = "largest" if info.higher_is_more_alike else "smallest"
        lines += ["", f"best = {best_word} value over all layer pairs; final = last layer vs last layer; "
                  f"mean = mean over all layer pairs; n.s. = not distinguishable from its permutation null.", ""]

    # layer heatmaps
    heat_lines: list[str] = []
    for m in measures:
        imgs = []
        for a, b in pairs_of(frame[frame["measure"] == m]):
            link = fig_link(heatmap_relpath(m, a, b, stems), f"{m}: {a} vs {b}")
            if link:
                imgs.append(link)
        if imgs:
            heat_lines += [f"### {escape_md(m)}", "", "\n".join(imgs), ""]
    if heat_lines:
        lines += ["## Layer by layer", "",
                  "Rows: first model's layers; columns: second model's; layer 0 (embeddings) at the origin; where "
                  "the two depths differ, the axes are relative depth (layer / last layer). One colour scale per "
                  "measure. The line joins each row's best-matching layer, the star marks the best pair, the "
                  "dashed line equal relative depth; hatched cells are not distinguishable from their "
                  "permutation null.", ""] + heat_lines
    lines += _controls_md(frame, measures, infos, fig_link)
    lines += _agreement_md(extra, manifest, models, fig_link)
    others = [p for k, p in given.items() if k not in placed]
    if others:
        lines += ["## Other figures", ""]
        for p in others:
            rel = os.path.relpath(p.resolve(), out.resolve())
            lines += [f"![{escape_md(Path(rel).stem)}]({_link(rel)})", ""]

    # provenance
    lines += ["## Provenance", ""]
    timings = manifest.get("timings") or {}
    if isinstance(timings, Mapping) and timings:
        lines += ["### Timings", ""]
        secs = {str(k): _num(v) for k, v in timings.items()}
        recorded = secs.pop("total", math.nan)
        # a sub-stage ("extract/model") counts toward the total unless its parent stage is listed too
        total = sum(v for k, v in secs.items()
                    if math.isfinite(v) and ("/" not in k or k.split("/")[0] not in secs))
        total = recorded if math.isfinite(recorded) else total
        rows = [[escape_md(k), f"{v:,.2f}" if math.isfinite(v) else "\u2013",
                 f"{100 * v / total:.1f}%" if total > 0 and math.isfinite(v) else "\u2013"] for k, v in secs.items()]
        rows.append(["**total**", f"**{total:,.2f}**", "100%" if total > 0 else "\u2013"])
        lines += _table(["stage", "seconds", "share"], rows, "lrr") + [""]
    versions = manifest.get("versions") or {}
    if isinstance(versions, Mapping) and versions:
        lines += ["### Versions", ""]
        lines += _table(["component", "version"], [[escape_md(k), _value(v)] for k, v in versions.items()]) + [""]
    if model_meta or corpus.get("fingerprint"):
        lines += ["### Fingerprints", ""]
        rows = [[escape_md(m.get("name")), _code(m.get("fingerprint") or "") or "\u2013",
                 escape_md(m.get("source_kind") or "\u2013"), escape_md(m.get("spec") or "\u2013"),
                 _code(m.get("location") or "") or "\u2013"] for m in model_meta]
        if corpus.get("fingerprint"):
            rows.append([f"corpus {escape_md(corpus.get('name') or '')}".strip(), _code(corpus["fingerprint"]),
                         escape_md(corpus.get("source") or "\u2013"), "\u2013", "\u2013"])
        lines += _table(["model", "fingerprint", "source", "spec", "location"], rows) + [""]
    controls = manifest.get("controls")
    controls = controls.get("random_init") if isinstance(controls, Mapping) else None
    if isinstance(controls, list) and controls:
        lines += ["### Random-init controls", ""]
        lines += _table(["control", "fingerprint", "notes", "representations"],
                        [[escape_md(c.get("name")), _code(c.get("fingerprint") or "") or "\u2013",
                          escape_md(c.get("notes") or ""), "reused" if c.get("reused") else "extracted"]
                         for c in controls if isinstance(c, Mapping)]) + [""]
    warnings = [w for w in (manifest.get("warnings") or []) if str(w).strip()]
    lines += ["### Warnings", ""]
    lines += ([f"- {escape_md(w)}" for w in warnings] if warnings else ["None."]) + [""]
    return atomic_write_text(out / "report.md", "\n".join(lines).rstrip() + "\n")


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _bound(v: float) -> str:
    if math.isinf(v):
        return "\u221e" if v > 0 else "\u2212\u221e"
    return f"{v:g}"


def _ci_md(lo: Any, hi: Any) -> str:
    return f"{_fmt(lo)}\u2013{_fmt(hi)}" if math.isfinite(_num(lo)) and math.isfinite(_num(hi)) else "\u2013"


def _compare_md(view: CompareView, infos: Mapping[str, MeasureInfo]) -> list[str]:
    lines = [f"## Comparison: {escape_md(view.new)} against the references", ""]
    lines += [" ".join(text_md(t) for t in view.verdict), ""]
    rows = []
    for m, t in view.overall.items():
        for r in t.itertuples(index=False):
            ref = r.model_b if r.model_a == view.new else r.model_a
            best = f"{_fmt(r.best)} (n.s.)" if r.best_verdict == VERDICT_NS else f"**{_fmt(r.best)}**"
            rows.append([_code(m), f"**{escape_md(ref)}**", best, _ci_md(r.best_ci_low, r.best_ci_high),
                         f"{_int(r.best_layer_a)} / {r.layers_a - 1}, {_int(r.best_layer_b)} / {r.layers_b - 1}",
                         _fmt(r.best_random_init), _fmt(r.best_null_mean), p_txt(r.best_q_value), r.best_verdict,
                         _fmt(r.final)])
    lines += ["### Overall similarity to each reference", ""]
    lines += _table(["measure", "reference", "best", "95% CI", "layers (new, ref)", "random-init", "null mean", "q",
                     "verdict", "final"], rows, "llrrlrrrlr") + [""]
    if not view.per_layer.empty:
        refs = list(dict.fromkeys(view.per_layer["reference"]))
        by = {(r.reference, int(r.layer)): r for r in view.per_layer.itertuples(index=False)}
        rows = []
        for i in sorted(set(view.per_layer["layer"].astype(int))):
            depth = next((r.depth for (_ref, li), r in by.items() if li == i), math.nan)
            row = [str(i), _fmt(depth, 2)]
            for ref in refs:
                r = by.get((ref, i))
                if r is None:
                    row.append("\u2013")
                    continue
                ns = math.isfinite(_num(r.q_value)) and _num(r.q_value) >= 0.05
                cell = f"{int(r.best_layer)} ({_fmt(r.best_depth, 2)}): {_fmt(r.value)}" + (" n.s." if ns else "")
                if math.isfinite(_num(r.ci_low)):
                    cell += f" \\[{_ci_md(r.ci_low, r.ci_high)}\\]"
                row.append(cell)
            rows.append(row)
        lines += [f"### Each layer of {escape_md(view.new)}: best-matching layer of each reference "
                  f"({_code(view.measure)})", ""]
        lines += _table(["layer", "depth"] + [escape_md(r) for r in refs], rows, "rr" + "l" * len(refs)) + [""]
        order = "; ".join(f"{escape_md(r)}: {_fmt(v, 2)}" for r, v in view.order.items())
        lines += ["Cell: best-matching reference layer (relative depth): score \\[95% CI\\]. Spearman rho of layer "
                  f"against best-matching layer (1 = same processing order): {order or '-'}.", ""]
    return lines


def _controls_md(frame: pd.DataFrame, measures: Sequence[str], infos: Mapping[str, MeasureInfo], fig_link) -> list[str]:
    lines = ["## Controls", ""]
    have = [c for c in ("random_init", "null_mean", "p_value", "ci_low") if c in frame and frame[c].notna().any()]
    if not have:
        return lines + ["No controls in this study: no random-init baseline, permutation null or bootstrap interval "
                        "was computed.", ""]
    lines += [_light(NULL_RULE) + " The random-init baseline is the same measure between random-weight versions "
              "of the two architectures at the same layers.", ""]
    if "random_init" not in have:
        lines += ["The random-init control was not run in this study.", ""]
    for m in measures:
        info = infos[m]
        lines += [f"### {escape_md(m)}", ""]
        if not has_controls(frame, m):
            lines += [f"No control computed for {_code(m)}.", ""]
            continue
        t = controls_table(frame, m, info)
        link = fig_link(controls_relpath(m), f"{m}: scores beside their controls")
        if link:
            lines += [link, ""]
        arrow = " \u2192 " if not info.symmetric else " vs "
        rows = []
        for r in t.itertuples(index=False):
            best = f"{_fmt(r.best)} (n.s.)" if r.best_verdict == VERDICT_NS else f"**{_fmt(r.best)}**"
            null = (f"{_fmt(r.best_null_mean)} \u00b1 {_fmt(r.best_null_std)}"
                    if math.isfinite(_num(r.best_null_std)) else _fmt(r.best_null_mean))
            rows.append([f"{escape_md(r.model_a)}{arrow}{escape_md(r.model_b)}", best,
                         _ci_md(r.best_ci_low, r.best_ci_high), _fmt(r.best_random_init), r.best_vs_random or "\u2013",
                         null, p_txt(r.best_p_value), p_txt(r.best_q_value), r.best_verdict,
                         f"{_fmt(r.final)} (n.s.)" if r.final_verdict == VERDICT_NS else _fmt(r.final),
                         _ci_md(r.final_ci_low, r.final_ci_high), _fmt(r.final_random_init)])
        lines += _table(["pair", "best", "95% CI", "random-init", "vs random-init", "null mean \u00b1 sd", "p", "q",
                         "verdict", "final", "final 95% CI", "final random-init"], rows, "lrrrlrrrlrrr") + [""]
    return lines


def _agreement_md(extra: Mapping[str, pd.DataFrame], manifest: Mapping[str, Any], models: Sequence[str],
                  fig_link) -> list[str]:
    lines = ["## Prediction agreement and outcome homogenization", ""]
    if not any(k in extra for k in ("probes", "agreement", "homogenization")):
        return lines + ["Not computed in this study: no probe, agreement or homogenization tables were given.", ""]
    probes = extra.get("probes")
    if probes is not None:
        lines += ["### Probe accuracy", ""]
        link = fig_link(probes_relpath(), "probe accuracy by relative depth")
        if link:
            lines += [link, ""]
        best = probe_best(probes)
        order = {m: k for k, m in enumerate(models)}
        best = best.sort_values("model", key=lambda c: c.map(lambda x: order.get(x, 1e9)), kind="stable")
        rows = [[f"**{escape_md(r.model)}**", f"{r.layer} / {r.last_layer}", f"**{_fmt(r.accuracy)}**",
                 _ci_md(r.ci_low, r.ci_high), _fmt(r.final_accuracy), _fmt(r.chance), _int(r.n_test)]
                for r in best.itertuples(index=False)]
        lines += _table(["model", "best layer", "accuracy", "95% CI", "final-layer accuracy", "chance", "n test"],
                        rows, "lrrrrrr") + [""]
    agree = extra.get("agreement")
    if agree is not None:
        lines += ["### Pairwise agreement of predictions", ""]
        measures, rows_in = agreement_rows(agree)

        def one(r) -> str:
            if r is None:
                return "\u2013"
            cell = _fmt(r.get("value"))
            if math.isfinite(_num(r.get("expected_independent"))):
                cell += f" ({_fmt(r.get('expected_independent'))})"
            return cell

        def side(x) -> str:
            return escape_md(x[0]) + (f" ({x[1]})" if x[1] is not None else "")

        rows = []
        for r in rows_in:
            row = [escape_md(r["selection"] or "\u2013"), f"{side(r['a'])} and {side(r['b'])}"]
            for m in measures:
                fwd, rev = r["cells"].get(m, (None, None))
                row.append("\u2013" if fwd is None and rev is None else
                           one(fwd) if rev is None else f"{one(fwd)} / \u2190 {one(rev)}")
            rows.append(row)
        lines += _table(["layers", "pair (layer)"] + [_code(m) for m in measures], rows,
                        "ll" + "r" * len(measures)) + [""]
        notes = "; ".join(f"{_code(m)}: {escape_md(AGREEMENT_LABELS[m])}" for m in measures if m in AGREEMENT_LABELS)
        lines += ["In parentheses: the value expected if the two models erred independently at their own error rates. "
                  "A directional measure gives first model \u2192 second, then \u2190 second \u2192 first."
                  + (f" {notes}." if notes else ""), ""]
    sets = extra.get("homogenization")
    if sets is not None:
        lines += ["### Agreement over all models and outcome homogenization", ""]
        rows = [[escape_md(r.get("selection", "\u2013")), _code(r.get("measure")), escape_md(r.get("groups", "\u2013")),
                 f"**{_fmt(r.get('value'))}**", _fmt(r.get("expected_independent")), _fmt(r.get("null_mean")),
                 p_txt(r.get("p_value")), _int(r.get("k")), _int(r.get("n"))] for r in sets.to_dict("records")]
        lines += _table(["layers", "measure", "groups", "value", "if independent", "null mean", "p", "k models", "n"],
                        rows, "lllrrrrrr") + [""]
        lines += ["h\\_avg, h\\_unif, h\\_worst: outcome homogenization (Bommasani et al. 2022), the rate at which all "
                  "models fail together over the rate expected if they failed independently; 1 = independent.", ""]
    return lines
