"""The html report: one self-contained ``report.html`` (figures embedded as data URIs, inline CSS, no
script, no network) built from the results frame, the manifest and the optional agreement frames.

Every string that comes from data (model names, corpus names, labels, licences, notes, commands,
warnings) goes through :func:`html.escape`; the page forbids scripts and remote loads with a
Content-Security-Policy, so that a model called ``<script>`` is only ever text.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
    num,
)
from ._common import pairs_of as _pairs_of
from ._measures import MeasureInfo, manifest_measure_info, resolve_measure_info
from .analysis import (
    INDEX_DEFINITION,
    MEAN_INTERVAL_RULE,
    NULL_RULE,
    VERDICT_NS,
    CompareView,
    Text,
    agreement_rows,
    compare_view,
    controls_table,
    f3,
    findings,
    homogenization_index,
    index_reading,
    normalize_extra,
    p_txt,
    probe_best,
)
from .markdown import (
    AGREEMENT_LABELS,
    controls_relpath,
    dendrogram_relpath,
    heatmap_relpath,
    probes_relpath,
    summary_relpath,
)
from .tables import summary_cache

__all__ = ["write_report_html", "text_html"]

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_CSS = """
:root{--fg:#1d1d1f;--muted:#5f6368;--line:#dadce0;--bg:#fff;--soft:#f6f8fa;--accent:#31688e;--ns:#8a8a8a}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"DejaVu Sans",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 28px 64px}
h1{font-size:1.7em;margin:0 0 .3em}h2{font-size:1.3em;margin:2em 0 .5em;padding-bottom:.25em;
border-bottom:1px solid var(--line)}h3{font-size:1.08em;margin:1.5em 0 .4em}
p,li{max-width:90ch}.lead{font-size:1.05em}.muted,.note{color:var(--muted)}.note{font-size:.92em}
code,pre{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.9em}
code{background:var(--soft);padding:0 .25em;border-radius:3px;overflow-wrap:anywhere}
pre{background:var(--soft);padding:10px 12px;border-radius:6px;overflow-x:auto;white-space:pre-wrap;
overflow-wrap:anywhere}
nav.toc{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:8px 14px;margin:1em 0}
nav.toc a{margin-right:1.1em;white-space:nowrap;color:var(--accent);text-decoration:none}
.index{display:flex;gap:22px;align-items:baseline;flex-wrap:wrap;border:1px solid var(--line);
border-left:5px solid var(--accent);border-radius:6px;padding:10px 16px;margin:.6em 0 1em;background:#fbfcfd}
.index .big{font-size:2.1em;font-weight:600;color:var(--accent)}
ul.findings li{margin:.3em 0}
.tablewrap{overflow-x:auto;margin:.5em 0 1em}
table{border-collapse:collapse;font-size:.88em}
th,td{border-bottom:1px solid var(--line);padding:4px 9px;text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even){background:#fcfcfd}
td.ns,span.ns{color:var(--ns);font-style:italic}
td:first-child{min-width:9em}td code,th code{white-space:nowrap;overflow-wrap:normal}
.name{font-weight:600;overflow-wrap:anywhere}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:14px;align-items:start}
figure{margin:0;padding:8px;border:1px solid var(--line);border-radius:6px;background:#fff;
break-inside:avoid}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{font-size:.84em;color:var(--muted);margin-top:4px;overflow-wrap:anywhere}
details{margin:.6em 0}summary{cursor:pointer;font-weight:600}
.tag{display:inline-block;padding:0 .45em;border-radius:3px;font-size:.8em;background:#e8f0fe;color:#174ea6}
.tag.ns{background:#f1f3f4;color:#5f6368}
footer{margin-top:3em;color:var(--muted);font-size:.85em}
@media print{nav.toc{display:none}figure{border:none}main{max-width:none}}
"""


def e(value: Any) -> str:
    """``value`` as html text: every ``& < > " '`` escaped; None as an empty string."""
    return "" if value is None else html.escape(str(value), quote=True)


def text_html(text: Text) -> str:
    """Render a :class:`~homoscope.report.analysis.Text` as html, escaping every run."""
    out = []
    for kind, s in text.runs:
        if kind == "b":
            out.append(f'<strong class="name">{e(s)}</strong>')
        elif kind == "c":
            out.append(f"<code>{e(s)}</code>")
        else:
            out.append(e(s))
    return "".join(out)


def _png_size(data: bytes) -> tuple[int, int, float | None]:
    """(width, height, dpi or None) of a PNG from its IHDR and pHYs chunks."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        raise ValueError("not a PNG file")
    w, h = struct.unpack(">II", data[16:24])
    dpi = None
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"pHYs" and length == 9:
            ppx, _ppy, unit = struct.unpack(">IIB", data[pos + 8:pos + 17])
            if unit == 1 and ppx:
                dpi = ppx * 0.0254
            break
        if kind == b"IDAT":
            break
        pos += 12 + length
    return w, h, dpi


def figure_html(path: str | os.PathLike, alt: str, caption: Text | str | None = None) -> str:
    """A ``<figure>`` with the PNG at ``path`` embedded as a base64 data URI, shown at its physical size
    (from the PNG's dpi; 96 css px per inch) and never wider than its box."""
    data = Path(path).read_bytes()
    w, h, dpi = _png_size(data)
    scale = 96.0 / dpi if dpi else 1.0
    cap = ""
    if caption is not None:
        cap = f"<figcaption>{text_html(caption) if isinstance(caption, Text) else e(caption)}</figcaption>"
    return (f'<figure><img src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}" '
            f'alt="{e(alt)}" width="{round(w * scale)}" height="{round(h * scale)}">{cap}</figure>')


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[str]], num_cols: Iterable[int] = (),
           raw: bool = True) -> str:
    """An html table (no header row where ``header`` is None); cells are already html (``raw``) or escaped
    here; a cell may be ``(css class, html)``."""
    nums = set(num_cols)
    head = "".join(('<th class="num">' if k in nums else "<th>") + (h if raw else e(h)) + "</th>"
                   for k, h in enumerate(header or []))
    body = []
    for r in rows:
        cells = []
        for k, c in enumerate(r):
            cls = c[0] if isinstance(c, tuple) else ("num" if k in nums else "")
            val = c[1] if isinstance(c, tuple) else c
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{val if raw else e(val)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if header is not None else ""
    return f'<div class="tablewrap"><table>{thead}<tbody>{"".join(body)}</tbody></table></div>'


def _int(v: Any) -> str:
    f = num(v)
    if math.isfinite(f):
        return f"{int(f):,}"
    return e(v) if isinstance(v, str) and v else "\u2013"


def _params(v: Any) -> str:
    f = num(v)
    if not math.isfinite(f):
        return e(v) if isinstance(v, str) and v else "\u2013"
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if f >= div:
            return f"{f / div:.3g}{suf}"
    return f"{int(f)}"


def _json(v: Any) -> str:
    if isinstance(v, str):
        return e(v)
    if v is None:
        return "\u2013"
    try:
        return e(json.dumps(v, default=str, ensure_ascii=False))
    except (TypeError, ValueError):
        return e(str(v))


def _bound(v: float) -> str:
    if math.isinf(v):
        return "\u221e" if v > 0 else "\u2212\u221e"
    return f"{v:g}"


def _ci(lo: Any, hi: Any) -> str:
    return f"{f3(lo)}\u2013{f3(hi)}" if math.isfinite(num(lo)) and math.isfinite(num(hi)) else "\u2013"


def _score(v: Any, verdict: str, bold: bool = False) -> tuple[str, str]:
    """A score cell: marked n.s. (grey, never as similarity) where not distinguishable from its null."""
    if verdict == VERDICT_NS:
        return ("num ns", f'{f3(v)} <span class="tag ns" title="not distinguishable from its permutation null">'
                          "n.s.</span>")
    return ("num", f"<strong>{f3(v)}</strong>" if bold else f3(v))


def write_report_html(
    frame: pd.DataFrame, manifest: Mapping[str, Any] | None, out_dir: str | os.PathLike,
    figures: Mapping[str, Sequence[str | os.PathLike]], *, extra: Mapping[str, pd.DataFrame] | None = None,
    measure_info: Callable[[str], Any] | None = None,
) -> Path:
    """Write ``report.html`` into ``out_dir`` (atomically) and return its path.

    Sections: findings (with the homogenization index and its definition); for a comparison
    (``manifest['study']['pairs'] == 'first-vs-rest'``) the new model against each reference; the study
    (corpus, models, measures, configuration, commands to reproduce); model-by-model similarity per
    measure (best-matching and final layers, dendrogram, table); layer-by-layer heatmaps; controls
    (each score beside its random-init baseline, permutation null, p and q, bootstrap interval);
    prediction agreement and outcome homogenization (from ``extra``; a one-line note where absent);
    provenance (versions, fingerprints, timings, warnings).

    Figures are embedded from the files in ``figures`` (named as :func:`write_outputs` names them, paths
    absolute or relative to ``out_dir``); a figure not in ``figures`` is left out. The page has no script
    and loads nothing: it opens from a file, offline.

    Args:
        frame: the tidy results frame.
        manifest: the study manifest (see :func:`homoscope.report.write_report_md`).
        out_dir: output folder.
        figures: ``{'heatmaps': [...], 'summaries': [...], 'controls': [...], 'agreement': [...]}``.
        extra: optional prediction-agreement frames ``{'probes', 'agreement', 'homogenization'}``.
        measure_info: callable ``name -> dict-like`` describing a measure (default: the manifest's
            ``measures`` entry, else the registry, else the built-in table).

    Raises:
        ValueError / TypeError: ``frame`` is not a valid results frame, or an extra frame is malformed.
    """
    with summary_cache():
        return _write_report_html(frame, manifest, out_dir, figures, measure_info, extra)


def _write_report_html(frame, manifest, out_dir, figures, measure_info, extra) -> Path:
    check_frame(frame)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = dict(manifest or {})
    measure_info = measure_info or manifest_measure_info(manifest)
    extra = normalize_extra(extra)
    measures = measures_of(frame)
    infos = {m: resolve_measure_info(m, measure_info) for m in measures}
    study = dict(manifest.get("study") or {})
    corpus = dict(manifest.get("corpus") or {})
    model_meta = [dict(m) for m in (manifest.get("models") or []) if isinstance(m, Mapping)]
    models = model_order(frame, [str(m.get("name")) for m in model_meta if m.get("name") is not None])
    stems = file_stems(sorted(set(model_order(frame))))

    given: dict[Path, Path] = {}
    for paths in figures.values():
        for p in paths:
            p = Path(p)
            if not p.is_absolute() and not p.exists():
                p = out / p
            given[p.resolve()] = p

    def fig(rel: str, alt: str, caption: Text | str | None = None) -> str:
        key = (out / rel).resolve()
        if key not in given or not given[key].is_file():
            return ""
        return figure_html(given[key], alt, caption)

    index = homogenization_index(frame, manifest, infos)
    found = findings(frame, manifest, infos, extra, index=index, include_index=False)
    view = compare_view(frame, manifest, infos)
    unit = study.get("unit") or (first_value(frame["unit"]) if "unit" in frame else None)
    n_rows, n_note = rows_used(frame)
    n_rows = n_rows if n_rows is not None else corpus.get("n")

    title = f"homoscope report: {len(models)} models" + (f" on {corpus['name']}" if corpus.get("name") else "")
    if view is not None:
        title = f"homoscope comparison: {view.new} against {len(view.references)} reference" + \
                ("s" if len(view.references) != 1 else "")
    parts: list[str] = []
    toc = [("findings", "Findings")]
    if view is not None:
        toc.append(("compare", "Comparison"))
    toc += [("study", "Study"), ("similarity", "Model by model"), ("layers", "Layer by layer"),
            ("controls", "Controls"), ("agreement", "Prediction agreement"), ("provenance", "Provenance")]

    intro = (f"This report compares {len(models)} models layer by layer"
             + (f" on n = {_int(n_rows)} {UNIT_PLURAL.get(str(unit), str(unit or 'rows'))}" if n_rows else "")
             + (f" from {corpus['name']}" if corpus.get("name") else "")
             + f", with {len(measures)} measure{'s' if len(measures) != 1 else ''}: ")
    parts.append(f"<header><h1>{e(title)}</h1>")
    parts.append(f'<p class="lead">{e(intro)}{", ".join(f"<code>{e(m)}</code>" for m in measures)}. Models: '
                 + ", ".join(f'<span class="name">{e(m)}</span>' for m in models) + ".</p>")
    if manifest.get("created"):
        parts.append(f'<p class="muted">Created {e(manifest["created"])}.</p>')
    data_files = [n for n in ("similarity.csv", "similarity.parquet", "summary.csv", "manifest.json", "report.md",
                              "probes.csv", "agreement.csv", "homogenization.csv") if (out / n).is_file()]
    if data_files:
        parts.append('<p class="muted">Data beside this file: ' + ", ".join(f"<code>{e(n)}</code>" for n in data_files)
                     + ".</p>")
    parts.append('<nav class="toc">' + "".join(f'<a href="#{k}">{e(v)}</a>' for k, v in toc) + "</nav></header>")

    # findings
    parts.append('<section id="findings"><h2>Findings</h2>')
    if index.computed:
        iv = (f"interval {f3(index.low)}\u2013{f3(index.high)}" if math.isfinite(index.low)
              else "no interval (no bootstrap)")
        reading = index_reading(index.value, index.baseline)
        parts.append(f'<div class="index"><span class="big">H = {f3(index.value)}</span><span>homogenization index; '
                     f"{e(iv)}; {index.n_pairs} model pair{'s' if index.n_pairs != 1 else ''}; primary measure "
                     f"<code>{e(index.measure)}</code>; {e(index.note)}. {e(reading)}</span></div>")
    else:
        parts.append(f'<div class="index"><span>Homogenization index not computed: {e(index.note)}.</span></div>')
    parts.append('<ul class="findings">' + "".join(f"<li>{text_html(t)}</li>" for t in found) + "</ul>")
    parts.append("<details><summary>Definitions</summary>"
                 f"<p>{e(INDEX_DEFINITION)}</p><p>{e(NULL_RULE)}</p><p>{e(MEAN_INTERVAL_RULE)}</p>"
                 "<p>Layer 0 is the embedding output; layer i is the output of block i. Relative depth = layer / "
                 "last layer (0 = embeddings, 1 = last layer).</p></details>")
    parts.append("</section>")

    if view is not None:
        parts.append(_compare_section(view))

    parts.append(_study_section(frame, manifest, study, corpus, model_meta, models, measures, infos, unit, n_rows))

    # model by model
    parts.append('<section id="similarity"><h2>Model-by-model similarity</h2>'
                 '<p class="note">Each cell scores a pair at its best-matching layer pair (left) and final layer '
                 'against final layer (right); n.s. marks a score not distinguishable from its permutation null. '
                 "The dendrogram clusters the models by 1 \u2212 best score (average linkage).</p>")
    for m in measures:
        info = infos[m]
        parts.append(f"<h3><code>{e(m)}</code></h3>")
        figs = [fig(summary_relpath(m, "best"), f"{m}: best-matching layers"),
                fig(summary_relpath(m, "final"), f"{m}: final layers"),
                fig(dendrogram_relpath(m), f"{m}: models clustered")]
        figs = [f for f in figs if f]
        if figs:
            parts.append('<div class="grid">' + "".join(figs) + "</div>")
        parts.append(_summary_table(controls_table(frame, m, info), info))
    parts.append("</section>")

    # layer by layer
    parts.append('<section id="layers"><h2>Layer by layer</h2><p class="note">Rows: first model\u2019s layers; '
                 "columns: second model\u2019s; layer 0 (embeddings) at the origin. Where the two models have "
                 "different depths the axes are relative depth (layer / last layer). One colour scale per measure. "
                 "The line joins each row\u2019s best-matching layer (the best-matching path), the star marks the best "
                 "pair, the dashed line equal relative depth; hatched cells are not distinguishable from their "
                 "permutation null.</p>")
    any_heat = False
    for m in measures:
        imgs = [fig(heatmap_relpath(m, a, b, stems), f"{m}: {a} vs {b}")
                for a, b in _pairs_of(frame[frame["measure"] == m])]
        imgs = [x for x in imgs if x]
        if imgs:
            any_heat = True
            plural = "s" if len(imgs) != 1 else ""
            parts.append(f"<details open><summary><code>{e(m)}</code> \u2013 {len(imgs)} pair{plural}</summary>"
                         f'<div class="grid">{"".join(imgs)}</div></details>')
    if not any_heat:
        parts.append('<p class="note">No layer heatmaps were written.</p>')
    parts.append("</section>")

    parts.append(_controls_section(frame, measures, infos, fig))
    parts.append(_agreement_section(extra, manifest, models, fig))
    parts.append(_provenance_section(manifest, corpus, model_meta))
    parts.append('<footer>Made by homoscope from the results frame and the manifest alone; the page runs no script '
                 "and loads nothing from the network.</footer>")

    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="generator" content="homoscope"><link rel="icon" href="data:,">'
            f"<title>{e(title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
            + "\n".join(p for p in parts if p) + "\n</main></body></html>\n")
    return atomic_write_text(out / "report.html", page)


# ------------------------------------------------------------------------------------------ sections


def _summary_table(table: pd.DataFrame, info: MeasureInfo) -> str:
    has_ci = np.isfinite(table["best_ci_low"].astype(float)).any()
    arrow = " \u2192 " if not info.symmetric else " vs "
    header = ["pair", "best", "layers (a, b)", "relative depth (a, b)"] + (["95% CI"] if has_ci else []) + [
        "final", "mean", "n", "d (a, b)"]
    rows = []
    for r in table.itertuples(index=False):
        row = [f'<span class="name">{e(r.model_a)}</span>{arrow}<span class="name">{e(r.model_b)}</span>',
               _score(r.best, r.best_verdict, bold=True),
               f"{_int(r.best_layer_a)} / {r.layers_a - 1}, {_int(r.best_layer_b)} / {r.layers_b - 1}",
               f"{f3(r.best_depth_a, 2)}, {f3(r.best_depth_b, 2)}"]
        if has_ci:
            row.append(_ci(r.best_ci_low, r.best_ci_high))
        row += [_score(r.final, r.final_verdict), f3(r.mean), _int(r.n), f"{_int(r.d_a)}, {_int(r.d_b)}"]
        rows.append(row)
    nums = [1, 2, 3] + ([4] if has_ci else []) + [len(header) - 4, len(header) - 3, len(header) - 2, len(header) - 1]
    word = "largest" if info.higher_is_more_alike else "smallest"
    return (_table(header, rows, nums) + f'<p class="note">best = {word} value over all layer pairs; final = last '
            "layer against last layer; mean = mean over all layer pairs.</p>")


def _study_section(frame, manifest, study, corpus, model_meta, models, measures, infos, unit, n_rows) -> str:
    s = ['<section id="study"><h2>Study</h2><h3>Corpus</h3>']
    facts = []
    if corpus.get("name"):
        facts.append(("corpus", f'<span class="name">{e(corpus["name"])}</span>'))
    if corpus.get("source"):
        facts.append(("source", e(corpus["source"])))
    if corpus.get("n") is not None:
        facts.append(("texts", _int(corpus["n"])))
    if corpus.get("n_docs") is not None:
        facts.append(("documents", _int(corpus["n_docs"])))
    if unit:
        facts.append(("unit", e(unit)))
    if study.get("pooling"):
        how = {"sentence": " (over a text's tokens)", "word": " (over a word's tokens)"}.get(str(unit), " (unused)")
        facts.append(("pooling", e(study["pooling"]) + how))
    if n_rows is not None:
        n_note = rows_used(frame)[1]
        facts.append(("n per score", _int(n_rows) + (f" ({e(n_note)})" if n_note else "")))
    if study.get("max_length"):
        facts.append(("max length", f"{_int(study['max_length'])} tokens"))
    rows_meta = manifest.get("rows")
    if isinstance(rows_meta, Mapping):
        for k in ("n", "dropped_words", "punctuation", "sampled"):
            if k in rows_meta:
                facts.append((f"rows: {k}", _json(rows_meta[k])))
    labels = corpus.get("labels")
    if isinstance(labels, Mapping) and labels:
        items = sorted(labels.items(), key=lambda kv: (-num(kv[1]) if math.isfinite(num(kv[1])) else 0, str(kv[0])))
        shown = ", ".join(f"{e(k)} ({_int(v)})" for k, v in items[:20])
        more = f", \u2026 {len(items) - 20} more" if len(items) > 20 else ""
        facts.append(("labels", f"{len(items)}: {shown}{more}"))
    else:
        facts.append(("labels", "none"))
    s.append(_table(None, [[f"<strong>{e(k)}</strong>", v] for k, v in facts]) if facts else
             '<p class="note">No corpus description in the manifest.</p>')
    meta = corpus.get("meta")
    if isinstance(meta, Mapping) and meta:
        s.append("<details><summary>Corpus details</summary>"
                 + _table(["detail", "value"], [[e(k), _json(v)] for k, v in meta.items()]) + "</details>")

    s.append("<h3>Models</h3>")
    by_name = {str(m.get("name")): m for m in model_meta}
    rows = []
    for name in models:
        m = by_name.get(name, {})
        src = " ".join(x for x in (e(m.get("source_kind") or ""), f"<code>{e(m['spec'])}</code>" if m.get("spec")
                                   else "") if x) or "\u2013"
        fn = m.get("final_norm_in_last")
        rows.append([f'<span class="name">{e(name)}</span>', e(m.get("architecture") or "\u2013"),
                     e(m.get("kind") or "\u2013"), _int(m.get("blocks")), _int(m.get("width")),
                     _params(m.get("n_params")), e(m.get("dtype") or "\u2013"),
                     "\u2013" if fn is None else ("yes" if fn else "no"), e(m.get("license") or "\u2013"), src,
                     e(m.get("notes") or "")])
    s.append(_table(["model", "architecture", "kind", "blocks", "width", "parameters", "dtype", "last layer normed",
                     "license", "source", "notes"], rows, [3, 4, 5]))

    s.append("<h3>Measures</h3>")
    rows = []
    for m in measures:
        info = infos[m]
        lo, hi = info.value_range
        rng = f"{_bound(lo)} to {_bound(hi)}"
        rows.append([f"<code>{e(m)}</code>", e(info.kind), "higher" if info.higher_is_more_alike else "lower", e(rng),
                     "yes" if info.symmetric else "no (both directions)", e(info.reference or "\u2013"),
                     e(info.description)])
    s.append(_table(["measure", "kind", "more alike", "range", "symmetric", "reference", "description"], rows))

    if study:
        s.append("<details><summary>Configuration</summary>"
                 + _table(["setting", "value"], [[e(k), _json(v)] for k, v in study.items()]) + "</details>")
    commands = [str(c) for c in (manifest.get("commands") or []) if str(c).strip()]
    s.append("<h3>Reproduce</h3>")
    if commands:
        s.append("<pre><code>" + e("\n".join(commands)) + "</code></pre>")
        s.append('<p class="note">Rebuild this report from the results folder, without any model: '
                 "<code>homoscope report FOLDER</code>.</p>")
    else:
        s.append('<p class="note">No commands recorded in the manifest.</p>')
    s.append("</section>")
    return "".join(s)


def _controls_section(frame, measures, infos, fig) -> str:
    s = ['<section id="controls"><h2>Controls</h2>']
    have = [c for c in ("random_init", "null_mean", "p_value", "ci_low") if c in frame and frame[c].notna().any()]
    if not have:
        s.append('<p class="note">No controls in this study: no random-init baseline, permutation null or '
                 "bootstrap interval was computed (run with permutations and bootstrap, and the random-init "
                 "control, to see what the scores mean).</p></section>")
        return "".join(s)
    missing = []
    if "random_init" not in have:
        missing.append("the random-init control was not run")
    if "null_mean" not in have and "p_value" not in have:
        missing.append("no permutation null")
    if "ci_low" not in have:
        missing.append("no bootstrap intervals")
    s.append(f'<p class="note">{e(NULL_RULE)} The random-init baseline is the same measure between random-weight '
             "versions of the two architectures at the same layers; a score is above it when its bootstrap "
             "interval (or, without one, the score) lies on the more-alike side."
             + (f" In this study: {e('; '.join(missing))}." if missing else "") + "</p>")
    for m in measures:
        info = infos[m]
        s.append(f"<h3><code>{e(m)}</code></h3>")
        if not has_controls(frame, m):
            s.append(f'<p class="note">No control computed for <code>{e(m)}</code>.</p>')
            continue
        t = controls_table(frame, m, info)
        f = fig(controls_relpath(m), f"{m}: scores beside their controls")
        if f:
            s.append(f'<div class="grid">{f}</div>')
        arrow = " \u2192 " if not info.symmetric else " vs "
        header = ["pair", "best", "95% CI", "random-init", "vs random-init", "null mean \u00b1 sd", "p", "q",
                  "verdict", "final", "final 95% CI", "final random-init", "final q"]
        rows = []
        for r in t.itertuples(index=False):
            null = (f"{f3(r.best_null_mean)} \u00b1 {f3(r.best_null_std)}" if math.isfinite(num(r.best_null_std))
                    else f3(r.best_null_mean))
            verdict = (f'<span class="tag ns">{e(r.best_verdict)}</span>' if r.best_verdict == VERDICT_NS
                       else e(r.best_verdict))
            rows.append([f'<span class="name">{e(r.model_a)}</span>{arrow}<span class="name">{e(r.model_b)}</span>',
                         _score(r.best, r.best_verdict, bold=True), _ci(r.best_ci_low, r.best_ci_high),
                         f3(r.best_random_init), e(r.best_vs_random or "\u2013"), null, p_txt(r.best_p_value),
                         p_txt(r.best_q_value), verdict, _score(r.final, r.final_verdict),
                         _ci(r.final_ci_low, r.final_ci_high), f3(r.final_random_init), p_txt(r.final_q_value)])
        s.append(_table(header, rows, [1, 2, 3, 5, 6, 7, 9, 10, 11, 12]))
    s.append("</section>")
    return "".join(s)


def _agreement_section(extra: Mapping[str, pd.DataFrame], manifest, models, fig) -> str:
    s = ['<section id="agreement"><h2>Prediction agreement and outcome homogenization</h2>']
    keys = ("probes", "agreement", "homogenization")
    if not any(k in extra for k in keys):
        s.append('<p class="note">Not computed in this study: no probe, agreement or homogenization tables were '
                 "given.</p></section>")
        return "".join(s)
    meta = manifest.get("agreement")
    if isinstance(meta, Mapping) and meta:
        keep = {k: v for k, v in meta.items() if k in ("task", "classes", "n", "n_train", "n_test", "train_documents",
                                                         "test_documents", "select", "bootstrap", "permutations")}
        if keep:
            s.append('<p class="note">' + "; ".join(f"{e(k)}: {_json(v)}" for k, v in keep.items()) + ".</p>")
    probes = extra.get("probes")
    s.append("<h3>Probe accuracy</h3>")
    if probes is None:
        s.append('<p class="note">No probe table.</p>')
    else:
        f = fig(probes_relpath(), "probe accuracy by relative depth")
        if f:
            s.append(f'<div class="grid">{f}</div>')
        best = probe_best(probes)
        order = {m: k for k, m in enumerate(models)}
        best = best.sort_values("model", key=lambda c: c.map(lambda x: order.get(x, 1e9)), kind="stable")
        rows = [[f'<span class="name">{e(r.model)}</span>', f"{r.layer} / {r.last_layer}",
                 ("num", f"<strong>{f3(r.accuracy)}</strong>"), _ci(r.ci_low, r.ci_high), f3(r.final_accuracy),
                 f3(r.chance), _int(r.n_test)] for r in best.itertuples(index=False)]
        s.append(_table(["model", "best layer", "accuracy", "95% CI", "final-layer accuracy", "chance", "n test"],
                        rows, [1, 2, 3, 4, 5, 6]))
    agree = extra.get("agreement")
    s.append("<h3>Pairwise agreement of predictions</h3>")
    if agree is None:
        s.append('<p class="note">No agreement table.</p>')
    else:
        s.append(_agreement_table(agree))
    sets = extra.get("homogenization")
    s.append("<h3>Agreement over all models and outcome homogenization</h3>")
    if sets is None:
        s.append('<p class="note">No homogenization table.</p>')
    else:
        rows = []
        for r in sets.to_dict("records"):
            rows.append([e(r.get("selection", "\u2013")), f"<code>{e(r.get('measure'))}</code>",
                         e(r.get("groups", "\u2013")), ("num", f"<strong>{f3(r.get('value'))}</strong>"),
                         f3(r.get("expected_independent")), f3(r.get("null_mean")), p_txt(r.get("p_value")),
                         _int(r.get("k")), _int(r.get("n"))])
        s.append(_table(["layers", "measure", "groups", "value", "if independent", "null mean", "p", "k models",
                         "n"], rows, [3, 4, 5, 6, 7, 8]))
        s.append('<p class="note">fleiss_kappa: agreement of all models\u2019 predictions beyond chance (Fleiss 1971). '
                 "h_avg, h_unif, h_worst: outcome homogenization (Bommasani et al. 2022), the rate at which all "
                 "models fail together divided by the rate expected if they failed independently; 1 = independent, "
                 "above 1 = failures shared.</p>")
    s.append("</section>")
    return "".join(s)


def _agreement_table(agree: pd.DataFrame) -> str:
    """One row per selection and pair, one column per measure: value (if independent) [CI]; a directional
    measure shows both directions, first model to second, then second to first."""
    measures, rows_in = agreement_rows(agree)

    def one(r) -> str:
        if r is None:
            return "\u2013"
        cell = f3(r.get("value"))
        if math.isfinite(num(r.get("expected_independent"))):
            cell += f' <span class="muted">({f3(r.get("expected_independent"))})</span>'
        if math.isfinite(num(r.get("ci_low"))) and math.isfinite(num(r.get("ci_high"))):
            cell += f'<br><span class="muted">{_ci(r.get("ci_low"), r.get("ci_high"))}</span>'
        return cell

    def side(x) -> str:
        return f'<span class="name">{e(x[0])}</span>' + (f" (layer {x[1]})" if x[1] is not None else "")

    rows = []
    for r in rows_in:
        row = [e(r["selection"] or "\u2013"), f"{side(r['a'])} and {side(r['b'])}"]
        for m in measures:
            fwd, rev = r["cells"].get(m, (None, None))
            if fwd is None and rev is None:
                row.append("\u2013")
            elif rev is None:
                row.append(("num", one(fwd)))
            else:
                row.append(("num", f"{one(fwd)}<br>\u2190 {one(rev)}"))
        rows.append(row)
    header = ["layers", "pair"] + [f"<code>{e(m)}</code>" for m in measures]
    notes = "; ".join(f"<code>{e(m)}</code>: {e(AGREEMENT_LABELS[m])}" for m in measures if m in AGREEMENT_LABELS)
    return (_table(header, rows) + '<p class="note">In parentheses: the value expected if the two models erred '
            "independently at their own error rates. A directional measure gives the first model \u2192 second "
            "model, then (\u2190) second \u2192 first." + (f" {notes}." if notes else "") + "</p>")


def _provenance_section(manifest, corpus, model_meta) -> str:
    s = ['<section id="provenance"><h2>Provenance</h2>']
    versions = manifest.get("versions") or {}
    if isinstance(versions, Mapping) and versions:
        rows = [[e(k), _json(v)] for k, v in versions.items()]
        s.append("<h3>Versions</h3>" + _table(["component", "version"], rows))
    if model_meta or corpus.get("fingerprint"):
        rows = [[f'<span class="name">{e(m.get("name"))}</span>', f"<code>{e(m.get('fingerprint') or '')}</code>",
                 e(m.get("source_kind") or "\u2013"), f"<code>{e(m.get('location') or '')}</code>",
                 e(str(m.get("store_key") or "")[:16]),
                 "reused" if m.get("reused") else ("extracted" if "reused" in m else "\u2013")]
                for m in model_meta]
        if corpus.get("fingerprint"):
            rows.append([f"corpus {e(corpus.get('name') or '')}", f"<code>{e(corpus['fingerprint'])}</code>",
                         e(corpus.get("source") or "\u2013"), "\u2013", "", ""])
        s.append("<h3>Fingerprints</h3>" + _table(["model", "fingerprint", "source", "location", "store key",
                                                   "representations"], rows))
    controls = (manifest.get("controls") or {}).get("random_init") if isinstance(manifest.get("controls"), Mapping) \
        else None
    if isinstance(controls, list) and controls:
        rows = [[f'<span class="name">{e(c.get("name"))}</span>', f"<code>{e(c.get('fingerprint') or '')}</code>",
                 e(c.get("notes") or ""), "reused" if c.get("reused") else "extracted"]
                for c in controls if isinstance(c, Mapping)]
        s.append("<h3>Random-init controls</h3>" + _table(["control", "fingerprint", "notes", "representations"], rows))
    timings = manifest.get("timings") or {}
    if isinstance(timings, Mapping) and timings:
        secs = {str(k): num(v) for k, v in timings.items()}
        total = secs.get("total")
        if total is None or not math.isfinite(total):
            total = sum(v for k, v in secs.items()
                        if math.isfinite(v) and ("/" not in k or k.split("/")[0] not in secs) and k != "total")
        rows = [[e(k), ("num", f"{v:,.2f}" if math.isfinite(v) else "\u2013"),
                 ("num", f"{100 * v / total:.1f}%" if total and math.isfinite(v) and k != "total" else "")]
                for k, v in secs.items()]
        if "total" not in secs:
            rows.append(["<strong>total</strong>", ("num", f"<strong>{total:,.2f}</strong>"), ("num", "")])
        s.append("<h3>Timings (seconds)</h3>" + _table(["stage", "seconds", "share"], rows, [1, 2]))
    warnings = [str(w) for w in (manifest.get("warnings") or []) if str(w).strip()]
    s.append("<h3>Warnings raised during the run</h3>")
    s.append("<ul>" + "".join(f"<li>{e(w)}</li>" for w in warnings) + "</ul>" if warnings else "<p>None.</p>")
    if manifest.get("device"):
        s.append(f'<p class="muted">Device: {e(manifest["device"])}.</p>')
    s.append("</section>")
    return "".join(s)


def _compare_section(view: CompareView) -> str:
    s = [f'<section id="compare"><h2>Comparison: <span class="name">{e(view.new)}</span> against the references</h2>']
    s.append("<p>" + " ".join(text_html(t) for t in view.verdict) + "</p>")
    s.append("<h3>Overall similarity to each reference</h3>")
    rows = []
    for m, t in view.overall.items():
        for r in t.itertuples(index=False):
            ref = r.model_b if r.model_a == view.new else r.model_a
            rows.append([f"<code>{e(m)}</code>", f'<span class="name">{e(ref)}</span>',
                         _score(r.best, r.best_verdict, bold=True), _ci(r.best_ci_low, r.best_ci_high),
                         f"{_int(r.best_layer_a)} / {r.layers_a - 1}, {_int(r.best_layer_b)} / {r.layers_b - 1}",
                         f3(r.best_random_init), f3(r.best_null_mean), p_txt(r.best_q_value),
                         e(r.best_verdict), _score(r.final, r.final_verdict)])
    s.append(_table(["measure", "reference", "best", "95% CI", "layers (new, ref)", "random-init", "null mean", "q",
                     "verdict", "final"], rows, [2, 3, 4, 5, 6, 7, 9]))
    if not view.per_layer.empty:
        s.append(f"<h3>Each layer of <span class=\"name\">{e(view.new)}</span>: best-matching layer of each reference "
                 f"(<code>{e(view.measure)}</code>)</h3>")
        refs = list(dict.fromkeys(view.per_layer["reference"]))
        layers = sorted(set(view.per_layer["layer"].astype(int)))
        by = {(r.reference, int(r.layer)): r for r in view.per_layer.itertuples(index=False)}
        rows = []
        for i in layers:
            depth = next((r.depth for (ref, li), r in by.items() if li == i), math.nan)
            row = [f"{i}", f3(depth, 2)]
            for ref in refs:
                r = by.get((ref, i))
                if r is None:
                    row.append("\u2013")
                    continue
                ns = math.isfinite(num(r.q_value)) and num(r.q_value) >= 0.05
                cell = (f"layer {int(r.best_layer)} ({f3(r.best_depth, 2)}): "
                        + (f'<span class="ns">{f3(r.value)} n.s.</span>' if ns else f"<strong>{f3(r.value)}</strong>"))
                if math.isfinite(num(r.ci_low)):
                    cell += f' <span class="muted">[{_ci(r.ci_low, r.ci_high)}]</span>'
                if math.isfinite(num(r.random_init)):
                    cell += f' <span class="muted">r {f3(r.random_init)}</span>'
                row.append(("num", cell))
            rows.append(row)
        s.append(_table(["layer", "depth"] + [f'<span class="name">{e(r)}</span>' for r in refs], rows, [0, 1]))
        order = "; ".join(f"{e(r)}: {f3(v, 2)}" for r, v in view.order.items()) or "\u2013"
        s.append(f'<p class="note">Cell: the reference layer (relative depth) that best matches this layer, its score, '
                 f"[95% CI], r = random-init at that cell. Spearman rho of layer against best-matching layer "
                 f"(1 = same processing order): {order}.</p>")
    s.append("</section>")
    return "".join(s)
