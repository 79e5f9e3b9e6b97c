"""The report's one builder: the results in, a :class:`~homoscope.report.document.Document` and the
``findings.json`` record out.

:func:`gather` computes what the report says once (:class:`Facts`: the controls tables, the summary of
each measure, the homogenization index, the findings, the comparison); :func:`build_document` lays out
every section, row, number and sentence from those objects and :func:`findings_record` saves the same
objects as data. The markdown and html reports are two renderings of one document, so they say the same.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._common import (
    ALPHA,
    UNIT_PLURAL,
    check_frame,
    controls_relpath,
    dendrogram_relpath,
    file_stems,
    finite,
    first_value,
    has_controls,
    heatmap_relpath,
    measures_of,
    model_order,
    num,
    pairs_of,
    probes_relpath,
    rows_used,
    summary_relpath,
)
from ._format import EMPTY, bound_txt, f3, int_txt, p_txt, params_txt, plural, seconds_txt, share_txt, span, value_txt
from ._measures import MeasureInfo, manifest_measure_info, resolve_measure_info
from .analysis import (
    AGREEMENT_LABELS,
    CEILING_DEFINITION,
    INDEX_DEFINITION,
    MEAN_INTERVAL_RULE,
    NULL_RULE,
    SEED_INDEX_DEFINITION,
    VERDICT_NS,
    B,
    C,
    CompareView,
    D,
    HomogenizationIndex,
    MeasureSummary,
    T,
    Text,
    agreement_rows,
    compare_view,
    cross_model_pairs,
    controls_table,
    family_table,
    findings,
    homogenization_index,
    index_details,
    index_text,
    join,
    measure_summary,
    model_recipes,
    normalize_extra,
    pair_ceilings,
    primary_measure,
    probe_best,
    seed_ceilings,
    seed_pair,
    summary_text,
)
from .document import (
    BulletList,
    Cell,
    CodeBlock,
    Details,
    Document,
    FileList,
    Figure,
    FigureGrid,
    IndexBox,
    Paragraph,
    Section,
    Table,
    cell,
    header,
    num_cell,
    score_cell,
)

__all__ = ["Facts", "gather", "build_document", "findings_record", "DATA_FILES"]

#: Data files the report lists where they lie beside it, in this order.
DATA_FILES = ("similarity.csv", "similarity.parquet", "summary.csv", "findings.json", "manifest.json", "probes.csv",
              "agreement.csv", "homogenization.csv")

LAYER_NOTE = ("Layer 0 is the embedding output; layer i is the output of block i. Relative depth = layer / last layer "
              "(0 = embeddings, 1 = last layer).")
SIMILARITY_NOTE = ("Each pair is scored at its best-matching layer pair and final layer against final layer; n.s. "
                   "marks a score not distinguishable from its permutation null. The dendrogram clusters the models "
                   "by 1 \u2212 best score (average linkage).")
HEATMAP_NOTE = ("Rows: first model\u2019s layers; columns: second model\u2019s; layer 0 (embeddings) at the origin. "
                "Where the two models have different depths the axes are relative depth (layer / last layer). One "
                "colour scale per measure. The line joins each row\u2019s best-matching layer (the best-matching "
                "path), the star marks the best pair, the dashed line equal relative depth; hatched cells are not "
                "distinguishable from their permutation null.")
RANDOM_INIT_NOTE = ("The random-init baseline is the same measure between random-weight versions of the two "
                    "architectures at the same layers; a score is above it when its bootstrap interval (or, without "
                    "one, the score) lies on the more-alike side.")
SETS_NOTE = ("fleiss_kappa: agreement of all models\u2019 predictions beyond chance (Fleiss 1971). h_avg, h_unif, "
             "h_worst: outcome homogenization (Bommasani et al. 2022), the rate at which all models fail together "
             "divided by the rate expected if they failed independently; 1 = independent, above 1 = failures shared.")
CEILING_NOTE = ("Seed ceiling: the pair's ceiling c_ab under this measure (see Seed ceiling); \u201csame recipe\u201d "
                "marks two seeds of one recipe, which make the ceiling; \u2013 where neither model's recipe has two "
                "seeds in the study.")
#: What the controls table shows as the seed ceiling of two seeds of one recipe.
SEED_PAIR_CELL = "same recipe"
FAMILY_NOTE = ("Family: the kinds of the two models of a pair (in alphabetical order); two seeds of one recipe are a "
               "family of their own. mean: the mean of the pairs' best scores; interval: the mean of their bootstrap "
               "95% bounds (see the definitions).")
FOOTER = "Made by homoscope from the results frame, the manifest and the agreement tables alone."
_AGREEMENT_META = ("task", "classes", "n", "n_train", "n_test", "train_documents", "test_documents", "select",
                   "bootstrap", "permutations")


# ------------------------------------------------------------------------------------------------ facts


@dataclass
class Facts:
    """Everything the report says, computed once from the results.

    Attributes:
        frame, manifest, extra: the inputs (``extra`` normalized by
            :func:`~homoscope.report.analysis.normalize_extra`); out: the output folder.
        study, corpus, model_meta: the manifest's study options, corpus record and model records.
        models: models in study order; measures: measures in order of appearance; infos: their descriptions.
        tables: per measure, :func:`~homoscope.report.analysis.controls_table`.
        summaries: per measure, :func:`~homoscope.report.analysis.measure_summary` of that table.
        index, findings, view: the homogenization index, the finding sentences (without the index) and
            the comparison (None unless the study compares one model with references).
        unit, n_rows, n_note: the unit of a row, the rows per score and a note on measures that used fewer.
        recipes: ``{model: training recipe}`` of the models that name one
            (:func:`~homoscope.report.analysis.model_recipes`).
        ceilings: per measure, :func:`~homoscope.report.analysis.seed_ceilings` (empty frames where no recipe
            has two models in the study).
        ceiling_measure: the measure of the seed ceiling and family tables (the primary measure, else the
            first); families: :func:`~homoscope.report.analysis.family_table` under it.
    """

    frame: pd.DataFrame
    manifest: dict[str, Any]
    extra: dict[str, pd.DataFrame]
    out: Path
    study: dict[str, Any]
    corpus: dict[str, Any]
    model_meta: list[dict[str, Any]]
    models: list[str]
    measures: list[str]
    infos: dict[str, MeasureInfo]
    tables: dict[str, pd.DataFrame]
    summaries: dict[str, MeasureSummary]
    index: HomogenizationIndex
    findings: list[Text]
    view: CompareView | None
    unit: str | None
    n_rows: int | None
    n_note: str
    recipes: dict[str, str] = field(default_factory=dict)
    ceilings: dict[str, pd.DataFrame] = field(default_factory=dict)
    ceiling_measure: str = ""
    families: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def seeded(self) -> bool:
        """Whether some training recipe has two or more models (seeds) in the study: the report then reads the
        scores against the seed ceiling."""
        return any(not c.empty for c in self.ceilings.values())


def gather(
    frame: pd.DataFrame, manifest: Mapping[str, Any] | None, out_dir: str | os.PathLike,
    measure_info: Callable[[str], Any] | None = None, extra: Mapping[str, pd.DataFrame] | None = None,
) -> Facts:
    """Compute the :class:`Facts` of a study.

    Args:
        frame: the tidy results frame.
        manifest: the study manifest, or None.
        out_dir: the folder the report is written to.
        measure_info: callable ``name -> dict-like`` describing a measure (default: the manifest's
            ``measures`` entry, else the registry, else a neutral guess).
        extra: optional prediction-agreement frames ``{'probes', 'agreement', 'homogenization'}``.

    Raises:
        ValueError / TypeError: ``frame`` is not a valid results frame, or an extra frame is malformed.
    """
    check_frame(frame)
    if frame.empty:
        raise ValueError("frame is empty: there is nothing to report")
    manifest = dict(manifest or {})
    extra = normalize_extra(extra)
    measure_info = measure_info or manifest_measure_info(manifest)
    measures = measures_of(frame)
    infos = {m: resolve_measure_info(m, measure_info) for m in measures}
    tables = {m: controls_table(frame, m, infos[m]) for m in measures}
    summaries = {m: measure_summary(cross_model_pairs(tables[m], manifest), infos[m]) for m in measures}
    index = homogenization_index(frame, manifest, infos)
    found = findings(frame, manifest, infos, extra, index=index, include_index=False, summaries=summaries)
    study, corpus = dict(manifest.get("study") or {}), dict(manifest.get("corpus") or {})
    model_meta = [dict(m) for m in (manifest.get("models") or []) if isinstance(m, Mapping)]
    models = model_order(frame, [str(m.get("name")) for m in model_meta if m.get("name") is not None])
    unit = study.get("unit") or (first_value(frame["unit"]) if "unit" in frame else None)
    n_rows, n_note = rows_used(frame)
    ceilings = {m: seed_ceilings(frame, manifest, infos, m, tables[m]) for m in measures}
    first = primary_measure(frame, manifest, infos) or measures[0]
    return Facts(frame, manifest, extra, Path(out_dir), study, corpus, model_meta, models, measures, infos, tables,
                 summaries, index, found, compare_view(frame, manifest, infos), unit,
                 n_rows if n_rows is not None else corpus.get("n"), n_note, model_recipes(manifest), ceilings, first,
                 family_table(frame, manifest, infos, first, tables[first]))


# ----------------------------------------------------------------------------------------- findings.json


def _plain_data(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None, numpy scalars as Python numbers (valid JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain_data(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def findings_record(facts: Facts) -> dict[str, Any]:
    """The analysis as data, for ``findings.json``: the homogenization index (value, interval, pairs,
    primary measure, baseline, note, sentence and definition; where some recipe has two or more seeds, H_seed
    with its fields and definition too), each finding as plain text, per measure the numbers its summary
    sentence quotes, the seed ceiling (ceiling and family tables, definition) where some recipe has two or more
    seeds, and the comparison's verdict where the study is one.

    Missing numbers are None.
    """
    idx = facts.index
    index = {"computed": idx.computed, "value": idx.value, "low": idx.low, "high": idx.high,
             "n_pairs": idx.n_pairs, "n_missing": idx.n_missing, "measure": idx.measure,
             "baseline": idx.baseline or None, "note": idx.note, "text": index_text(idx).plain(),
             "definition": INDEX_DEFINITION}
    if facts.seeded:
        index.update(n_seed_pairs=idx.n_seed_pairs, seed_value=idx.seed_value, seed_low=idx.seed_low,
                     seed_high=idx.seed_high, n_ceiling_pairs=idx.n_ceiling_pairs,
                     below_floor=[list(p) for p in idx.below_floor], seed_note=idx.seed_note,
                     seed_definition=SEED_INDEX_DEFINITION)
    measures = {}
    for m, s in facts.summaries.items():
        measures[m] = {"summary": summary_text(s).plain(), "pairs": s.n_pairs,
                       "most_alike": dataclasses.asdict(s.most) if s.most else None,
                       "least_alike": dataclasses.asdict(s.least) if s.least else None,
                       "mean_best": s.mean_best, "final_range": [s.final_low, s.final_high],
                       "final_pairs": s.n_final}
    record: dict[str, Any] = {**({"run": facts.manifest["run"]} if facts.manifest.get("run") else {}),
                              "homogenization_index": index, "findings": [t.plain() for t in facts.findings],
                              "measures": measures}
    if facts.seeded:
        record["seed_ceiling"] = {"measure": facts.ceiling_measure, "definition": CEILING_DEFINITION,
                                  "recipes": facts.ceilings[facts.ceiling_measure].to_dict("records"),
                                  "families": facts.families.to_dict("records")}
    if facts.view is not None:
        v = facts.view
        record["comparison"] = {"new": v.new, "references": v.references, "measure": v.measure,
                                "verdict": [t.plain() for t in v.verdict]}
    return _plain_data(record)


# -------------------------------------------------------------------------------------------- the document


class _Figures:
    """The figures given to the report, each placed once: by its file name beside what it shows, any
    other at the end."""

    def __init__(self, figures: Mapping[str, Sequence[str | os.PathLike]], out: Path) -> None:
        self.out = out
        self.given: dict[Path, Path] = {}
        for paths in figures.values():
            for p in paths:
                p = Path(p)
                if not p.is_absolute() and not p.exists():
                    p = out / p  # relative to the output folder rather than to the working folder
                self.given[p.resolve()] = p
        self.placed: set[Path] = set()

    def grid(self, wanted: Iterable[tuple[str, str]]) -> tuple[FigureGrid, ...]:
        """A grid of the figures ``(relative path, alt text)`` that were given and exist; () when none."""
        figs = []
        for rel, alt in wanted:
            key = (self.out / rel).resolve()
            if key in self.given and self.given[key].is_file():
                self.placed.add(key)
                figs.append(Figure(rel, alt))
        return (FigureGrid(tuple(figs)),) if figs else ()

    def rest(self) -> tuple[FigureGrid, ...]:
        """The figures not placed yet, named by their file stem."""
        root = self.out.resolve()
        rels = [os.path.relpath(k, root).replace(os.sep, "/") for k, p in self.given.items()
                if k not in self.placed and p.is_file()]
        return self.grid((rel, Path(rel).stem) for rel in rels)


def build_document(facts: Facts, figures: Mapping[str, Sequence[str | os.PathLike]]) -> Document:
    """Lay out the report of ``facts``.

    Args:
        facts: from :func:`gather`.
        figures: ``{'heatmaps': [...], 'summaries': [...], ...}`` paths of figures already written
            (absolute, relative to the working folder, or relative to the output folder). Figures named as
            :func:`~homoscope.report.write_outputs` names them are placed beside what they show, any other
            in a last section; a figure not given, or not a file, is left out.

    Returns:
        The :class:`~homoscope.report.document.Document`.
    """
    figs = _Figures(figures, facts.out)
    sections = [_findings_section(facts)]
    if facts.view is not None:
        sections.append(_compare_section(facts.view))
    sections += [_study_section(facts), _similarity_section(facts, figs), _layers_section(facts, figs),
                 _controls_section(facts, figs)]
    if facts.seeded:
        sections.append(_ceiling_section(facts))
    sections.append(_agreement_section(facts, figs))
    others = figs.rest()
    if others:
        sections.append(Section("figures", T("Other figures"), 2, others, "Other figures"))
    sections.append(_provenance_section(facts))
    return Document(_title(facts), _head(facts), tuple(sections), T(FOOTER))


def _d(v: Any) -> Text:
    """A value from data as text; :data:`EMPTY` where missing (None, empty, NaN)."""
    missing = v is None or (isinstance(v, str) and not v) or (isinstance(v, float) and math.isnan(v))
    return T(EMPTY) if missing else T(D(v))


def _pair(a: str, b: str, info: MeasureInfo) -> Cell:
    return cell(D(a), " \u2192 " if not info.symmetric else " vs ", D(b))


def _layers_txt(r: Any) -> str:
    """``'1 / 2, 2 / 4'``: the best layer of each model over its last layer."""
    return f"{int_txt(r.best_layer_a)} / {r.layers_a - 1}, {int_txt(r.best_layer_b)} / {r.layers_b - 1}"


def _title(f: Facts) -> Text:
    if f.view is not None:
        return T("homoscope comparison: ", D(f.view.new), f" against {plural(len(f.view.references), 'reference')}")
    on = (" on ", D(f.corpus["name"])) if f.corpus.get("name") else ()
    return T(f"homoscope report: {plural(len(f.models), 'model')}", *on)


def _head(f: Facts) -> tuple:
    """The opening summary (the study in one sentence, then each measure's summary), the date and the data
    files beside the report."""
    intro = T(f"This report compares {plural(len(f.models), 'model')} (", join((T(D(m)) for m in f.models), ", "),
              ") layer by layer")
    if f.n_rows is not None:
        intro += T(f" on n = {int_txt(f.n_rows)} ", D(UNIT_PLURAL.get(str(f.unit), f.unit or "rows")))
    if f.corpus.get("name"):
        intro += T(" from ", D(f.corpus["name"]))
    if f.study.get("pooling") and str(f.unit) == "sentence":
        intro += T(" (", D(f.study["pooling"]), " pooling)")
    intro += T(f", with {plural(len(f.measures), 'measure')} (", join((T(C(m)) for m in f.measures), ", "), ").")
    blocks: list = [Paragraph(join([intro, *(summary_text(f.summaries[m]) for m in f.measures)], " "), "lead")]
    if f.manifest.get("created"):
        blocks.append(Paragraph(T("Created ", D(f.manifest["created"]), "."), "muted"))
    files = tuple(n for n in DATA_FILES if (f.out / n).is_file())
    if files:
        blocks.append(FileList("Data beside this report", files))
    return tuple(blocks)


def _findings_section(f: Facts) -> Section:
    idx = f.index
    box = IndexBox(f"H = {f3(idx.value)}", index_details(idx)) if idx.computed else IndexBox(None, index_text(idx))
    blocks: list = [box]
    if f.findings:
        blocks.append(BulletList(tuple(f.findings), "findings"))
    rules = (INDEX_DEFINITION, *((SEED_INDEX_DEFINITION,) if f.seeded else ()), MEAN_INTERVAL_RULE, NULL_RULE,
             LAYER_NOTE)
    blocks.append(Details(T("Definitions"), tuple(Paragraph(T(r)) for r in rules)))
    return Section("findings", T("Findings"), 2, tuple(blocks), "Findings")


# ------------------------------------------------------------------------------------------- comparison


def _compare_section(view: CompareView) -> Section:
    rows = []
    for m, t in view.overall.items():
        for r in t.itertuples(index=False):
            ref = r.model_b if r.model_a == view.new else r.model_a
            rows.append((cell(C(m)), cell(B(ref)), score_cell(r.best, r.best_verdict, bold=True),
                         num_cell(span(r.best_ci_low, r.best_ci_high)), num_cell(_layers_txt(r)),
                         num_cell(f3(r.best_random_init)), num_cell(f3(r.best_null_mean)),
                         num_cell(p_txt(r.best_q_value)), cell(r.best_verdict), score_cell(r.final, r.final_verdict)))
    head = header(["measure", "reference", "best", "95% CI", "layers (new, ref)", "random-init", "null mean", "q",
                   "verdict", "final"], numeric=(2, 3, 4, 5, 6, 7, 9))
    blocks: list = [Paragraph(join(view.verdict, " ")),
                    Section("", T("Overall similarity to each reference"), 3, (Table(head, tuple(rows)),))]
    if not view.per_layer.empty:
        blocks.append(_compare_layers(view))
    return Section("compare", T("Comparison: ", D(view.new), " against the references"), 2, tuple(blocks),
                   "Comparison")


def _compare_layers(view: CompareView) -> Section:
    """Each layer of the new model against its best-matching layer of each reference."""
    refs = list(dict.fromkeys(view.per_layer["reference"]))
    by = {(r.reference, int(r.layer)): r for r in view.per_layer.itertuples(index=False)}
    names: list = ["layer", "depth"]
    for ref in refs:
        names += [T(D(ref), ": layer (depth)"), T(D(ref), ": score"), T(D(ref), ": 95% CI")]
    rows = []
    for i in sorted(set(view.per_layer["layer"].astype(int))):
        depth = next((r.depth for (_ref, li), r in by.items() if li == i), math.nan)
        row = [num_cell(str(i)), num_cell(f3(depth, 2))]
        for ref in refs:
            r = by.get((ref, i))
            if r is None:
                row += [num_cell(EMPTY)] * 3
                continue
            ns = finite(r.q_value) and num(r.q_value) >= ALPHA
            row += [num_cell(f"{int(r.best_layer)} ({f3(r.best_depth, 2)})"),
                    score_cell(r.value, VERDICT_NS if ns else "", bold=True), num_cell(span(r.ci_low, r.ci_high))]
        rows.append(tuple(row))
    order = join((T(D(r), f": {f3(v, 2)}") for r, v in view.order.items()), "; ") if view.order else T(EMPTY)
    note = T("Layer (depth): the reference layer (relative depth) that best matches this layer; score: the measure "
             "there, n.s. where not distinguishable from its permutation null. Spearman rho of layer against "
             "best-matching layer (1 = same processing order): ", order, ".")
    title = T("Each layer of ", D(view.new), ": best-matching layer of each reference (", C(view.measure), ")")
    table = Table(header(names, numeric=range(len(names))), tuple(rows))
    return Section("", title, 3, (table, Paragraph(note, "note")))


# ------------------------------------------------------------------------------------------------ study


def _study_section(f: Facts) -> Section:
    blocks: list = [_corpus_section(f), _models_section(f), _measures_section(f)]
    if f.study:
        rows = tuple((cell(D(k)), cell(D(value_txt(v)))) for k, v in f.study.items())
        blocks.append(Details(T("Configuration"), (Table(header(["setting", "value"]), rows),)))
    commands = [str(c) for c in (f.manifest.get("commands") or []) if str(c).strip()]
    if commands:
        reproduce: tuple = (CodeBlock("\n".join(commands)),
                            Paragraph(T("Rebuild this report from the results folder, without any model: ",
                                        C("homoscope report FOLDER"), "."), "note"))
    else:
        reproduce = (Paragraph(T("No commands recorded in the manifest."), "note"),)
    blocks.append(Section("", T("Reproduce"), 3, reproduce))
    return Section("study", T("Study"), 2, tuple(blocks), "Study")


def _corpus_facts(f: Facts) -> list[tuple[str, Text]]:
    """``(label, value)`` of the corpus and of what a row is."""
    corpus, study, unit = f.corpus, f.study, f.unit
    facts = [(label, value) for label, key, value in (
        ("corpus", "name", T(B(corpus.get("name")))), ("source", "source", _d(corpus.get("source"))),
        ("texts", "n", _d(int_txt(corpus.get("n")))), ("documents", "n_docs", _d(int_txt(corpus.get("n_docs")))),
    ) if corpus.get(key) not in (None, "")]
    if unit:
        facts.append(("unit", _d(unit)))
    if study.get("pooling"):
        how = {"sentence": " (over a text's tokens)", "word": " (over a word's tokens)"}.get(str(unit), " (unused)")
        facts.append(("pooling", _d(study["pooling"]) + T(how)))
    if f.n_rows is not None:
        facts.append(("n per score", _d(int_txt(f.n_rows)) + (T(" (", D(f.n_note), ")") if f.n_note else T())))
    if study.get("max_length"):
        facts.append(("max length", _d(int_txt(study["max_length"])) + T(" tokens")))
    for label, value in (("dtype", study.get("dtype")), ("device", f.manifest.get("device") or study.get("device"))):
        if value:
            facts.append((label, _d(value)))
    rows_meta = f.manifest.get("rows")
    if isinstance(rows_meta, Mapping):
        facts += [(f"rows: {k}", _d(value_txt(rows_meta[k]))) for k in ("n", "dropped_words", "punctuation", "sampled")
                  if k in rows_meta]
    return facts + [("labels", _labels_text(corpus.get("labels")))]


def _labels_text(labels: Any, shown: int = 20) -> Text:
    """``'3: sport (30), science (34), …'``, the most frequent first; ``'none'`` without labels."""
    if not isinstance(labels, Mapping) or not labels:
        return T("none")
    items = sorted(labels.items(), key=lambda kv: (-num(kv[1]) if finite(kv[1]) else 0, str(kv[0])))
    listed = join((T(D(k), f" ({int_txt(v)})") for k, v in items[:shown]), ", ")
    more = f", \u2026 {len(items) - shown} more" if len(items) > shown else ""
    return T(f"{len(items)}: ", listed, more)


def _corpus_section(f: Facts) -> Section:
    facts = _corpus_facts(f)
    blocks: list = [Table(None, tuple((Cell(T(k), bold=True), Cell(v)) for k, v in facts))]
    meta = f.corpus.get("meta")
    if isinstance(meta, Mapping) and meta:
        rows = tuple((cell(D(k)), cell(D(value_txt(v)))) for k, v in meta.items())
        blocks.append(Details(T("Corpus details"), (Table(header(["detail", "value"]), rows),)))
    return Section("", T("Corpus"), 3, tuple(blocks))


def _models_section(f: Facts) -> Section:
    by_name = {str(m.get("name")): m for m in f.model_meta}
    rows = []
    for name in f.models:
        m = by_name.get(name, {})
        fn = m.get("final_norm_in_last")
        source = [D(m["source_kind"])] if m.get("source_kind") else []
        if m.get("spec"):
            source += [" ", C(m["spec"])] if source else [C(m["spec"])]
        rows.append((cell(B(name)), Cell(_d(m.get("architecture"))), Cell(_d(m.get("kind"))),
                     Cell(_d(int_txt(m.get("blocks"))), True), Cell(_d(int_txt(m.get("width"))), True),
                     Cell(_d(params_txt(m.get("n_params"))), True), Cell(_d(m.get("dtype"))),
                     cell(EMPTY if fn is None else ("yes" if fn else "no")), Cell(_d(m.get("license"))),
                     cell(*source) if source else cell(EMPTY), cell(D(m.get("notes") or ""))))
        if f.recipes:
            seed = m.get("seed")
            rows[-1] += (Cell(_d(f.recipes.get(name))), num_cell(int_txt(seed) if isinstance(seed, int) else EMPTY))
    names = ["model", "architecture", "kind", "blocks", "width", "parameters", "dtype", "last layer normed",
             "license", "source", "notes"] + (["recipe", "seed"] if f.recipes else [])
    head = header(names, numeric=(3, 4, 5, *((12,) if f.recipes else ())))
    return Section("", T("Models"), 3, (Table(head, tuple(rows)),))


def _measures_section(f: Facts) -> Section:
    rows = []
    for m in f.measures:
        info = f.infos[m]
        rng = f"{bound_txt(info.value_range[0])} to {bound_txt(info.value_range[1])}"
        if info.display_range is not None and info.display_range != info.value_range:
            rng += f" (shown {bound_txt(info.display_range[0])} to {bound_txt(info.display_range[1])})"
        rows.append((cell(C(m)), cell(info.kind), cell("higher" if info.higher_is_more_alike else "lower"), cell(rng),
                     cell("yes" if info.symmetric else "no (both directions)"), Cell(_d(info.reference)),
                     cell(D(info.description))))
    head = header(["measure", "kind", "more alike", "range", "symmetric", "reference", "description"])
    return Section("", T("Measures"), 3, (Table(head, tuple(rows)),))


# ------------------------------------------------------------------------------------ similarity and layers


def _summary_table(t: pd.DataFrame, info: MeasureInfo) -> Table:
    """One row per pair: best value, its layers and depths, interval and p where any, final, mean, n, d."""
    has_ci = bool(np.isfinite(t["best_ci_low"].astype(float)).any())
    has_p = bool(np.isfinite(t["best_p_value"].astype(float)).any())
    names = ["pair", "best", "layers (a, b)", "relative depth (a, b)"] + ["95% CI"] * has_ci + ["p at best"] * has_p
    names += ["final", "mean", "n", "d (a, b)"]
    rows = []
    for r in t.itertuples(index=False):
        row = [_pair(r.model_a, r.model_b, info), score_cell(r.best, r.best_verdict, bold=True),
               num_cell(_layers_txt(r)), num_cell(f"{f3(r.best_depth_a, 2)}, {f3(r.best_depth_b, 2)}")]
        row += [num_cell(span(r.best_ci_low, r.best_ci_high))] * has_ci + [num_cell(p_txt(r.best_p_value))] * has_p
        row += [score_cell(r.final, r.final_verdict), num_cell(f3(r.mean)), num_cell(int_txt(r.n)),
                num_cell(f"{int_txt(r.d_a)}, {int_txt(r.d_b)}")]
        rows.append(tuple(row))
    return Table(header(names, numeric=range(1, len(names))), tuple(rows))


def _similarity_section(f: Facts, figs: _Figures) -> Section:
    blocks: list = [Paragraph(T(SIMILARITY_NOTE), "note")]
    for m in f.measures:
        info = f.infos[m]
        grid = figs.grid([(summary_relpath(m, "best"), f"{m}: best-matching layers"),
                          (summary_relpath(m, "final"), f"{m}: final layers"),
                          (dendrogram_relpath(m), f"{m}: models clustered")])
        word = "largest" if info.higher_is_more_alike else "smallest"
        note = T(f"best = {word} value over all layer pairs; final = last layer against last layer; mean = mean "
                 "over all layer pairs; n.s. = not distinguishable from its permutation null.")
        blocks.append(Section("", T(C(m)), 3, (*grid, _summary_table(f.tables[m], info), Paragraph(note, "note"))))
    return Section("similarity", T("Model-by-model similarity"), 2, tuple(blocks), "Model by model")


def _layers_section(f: Facts, figs: _Figures) -> Section:
    stems = file_stems(sorted(set(model_order(f.frame))))
    blocks: list = [Paragraph(T(HEATMAP_NOTE), "note")]
    for m in f.measures:
        pairs = pairs_of(f.frame[f.frame["measure"] == m])
        grid = figs.grid((heatmap_relpath(m, a, b, stems), f"{m}: {a} vs {b}") for a, b in pairs)
        if grid:
            n = len(grid[0].figures)
            blocks.append(Section("", T(C(m), f" \u2013 {plural(n, 'pair')}"), 3, grid))
    if len(blocks) == 1:
        blocks.append(Paragraph(T("No layer heatmaps were written."), "note"))
    return Section("layers", T("Layer by layer"), 2, tuple(blocks), "Layer by layer")


# ---------------------------------------------------------------------------------------------- controls


def _controls_table(t: pd.DataFrame, info: MeasureInfo, ceiling: Sequence[Cell] | None = None) -> Table:
    """Each pair's best and final score beside its random-init baseline, null, p, q and interval; with
    ``ceiling`` (one cell per row), the pair's seed ceiling after the best score's interval."""
    rows = []
    for k, r in enumerate(t.itertuples(index=False)):
        null = (f"{f3(r.best_null_mean)} \u00b1 {f3(r.best_null_std)}" if finite(r.best_null_std)
                else f3(r.best_null_mean))
        row = [_pair(r.model_a, r.model_b, info), score_cell(r.best, r.best_verdict, bold=True),
               num_cell(span(r.best_ci_low, r.best_ci_high))] + ([ceiling[k]] if ceiling is not None else [])
        rows.append((*row, num_cell(f3(r.best_random_init)),
                     cell(r.best_vs_random or EMPTY), num_cell(null), num_cell(p_txt(r.best_p_value)),
                     num_cell(p_txt(r.best_q_value)), cell(r.best_verdict), score_cell(r.final, r.final_verdict),
                     num_cell(span(r.final_ci_low, r.final_ci_high)), num_cell(f3(r.final_random_init)),
                     num_cell(p_txt(r.final_q_value))))
    names = ["pair", "best", "95% CI", *(["seed ceiling"] if ceiling is not None else []), "random-init",
             "vs random-init", "null mean \u00b1 sd", "p", "q", "verdict", "final", "final 95% CI", "final random-init",
             "final q"]
    text = {names.index(x) for x in ("pair", "vs random-init", "verdict")}
    return Table(header(names, numeric=(k for k in range(len(names)) if k not in text)), tuple(rows))


def _ceiling_cells(f: Facts, m: str) -> list[Cell] | None:
    """The seed ceiling c_ab of each pair of the controls table of ``m`` (:data:`SEED_PAIR_CELL` for two seeds
    of one recipe, :data:`EMPTY` without one); None where no recipe has two models in the study."""
    if not f.seeded:
        return None
    t = f.tables[m]
    values = pair_ceilings(t, f.recipes, f.ceilings[m])
    return [num_cell(SEED_PAIR_CELL if seed_pair(a, b, f.recipes) else f3(c))
            for a, b, c in zip(t["model_a"], t["model_b"], values)]


def _controls_section(f: Facts, figs: _Figures) -> Section:
    frame = f.frame
    have = {c for c in ("random_init", "null_mean", "p_value", "ci_low") if c in frame and frame[c].notna().any()}
    if not have:
        return Section("controls", T("Controls"), 2, (Paragraph(T(
            "No controls in this study: no random-init baseline, permutation null or bootstrap interval was "
            "computed (run with permutations and bootstrap, and the random-init control, to see what the scores "
            "mean)."), "note"),), "Controls")
    missing = [what for what, absent in (("the random-init control was not run", "random_init" not in have),
                                         ("no permutation null", not have & {"null_mean", "p_value"}),
                                         ("no bootstrap intervals", "ci_low" not in have)) if absent]
    blocks: list = [Paragraph(T(NULL_RULE, " ", RANDOM_INIT_NOTE,
                                f" In this study: {'; '.join(missing)}." if missing else "",
                                f" {CEILING_NOTE}" if f.seeded else ""), "note")]
    for m in f.measures:
        if not has_controls(frame, m):
            blocks.append(Section("", T(C(m)), 3, (Paragraph(T("No control computed for ", C(m), "."), "note"),)))
            continue
        grid = figs.grid([(controls_relpath(m), f"{m}: scores beside their controls")])
        table = _controls_table(f.tables[m], f.infos[m], _ceiling_cells(f, m))
        blocks.append(Section("", T(C(m)), 3, (*grid, table)))
    return Section("controls", T("Controls"), 2, tuple(blocks), "Controls")


# ------------------------------------------------------------------------------------------ seed ceiling


def _ceiling_section(f: Facts) -> Section:
    """The seed ceiling of each recipe with two or more seeds and the pairs grouped by family, under the
    primary measure, with the ceiling's definition."""
    m, ceil = f.ceiling_measure, f.ceilings[f.ceiling_measure]
    rows = []
    for r in ceil.itertuples(index=False):
        seeds = ", ".join(EMPTY if s is None else str(s) for s in r.seeds)
        rows.append((cell(D(r.recipe)), Cell(_d(r.kind)), num_cell(f"{r.n_seeds} ({seeds})"),
                     num_cell(int_txt(r.n_pairs)), num_cell(f3(r.ceiling), bold=True),
                     num_cell(span(r.ceiling_low, r.ceiling_high)), num_cell(r.layers or EMPTY),
                     num_cell(f3(r.random_init)), num_cell(f3(r.final)), num_cell(span(r.final_low, r.final_high))))
    head = header(["recipe", "kind", "models (seeds)", "seed pairs", "ceiling", "interval", "at layers", "random-init",
                   "final", "final interval"], numeric=range(2, 10))
    fam = tuple((cell(D(r.family)), cell(r.scope), num_cell(int_txt(r.n_pairs)), num_cell(f3(r.mean), bold=True),
                 num_cell(span(r.low, r.high))) for r in f.families.itertuples(index=False))
    fam_head = header(["family", "scope", "pairs", "mean best", "interval"], numeric=(2, 3, 4))
    blocks = (Paragraph(T(CEILING_DEFINITION), "note"),
              Section("", T("Ceiling of each recipe (", C(m), ")"), 3, (Table(head, tuple(rows)),)),
              Section("", T("Within and across families (", C(m), ")"), 3,
                      (Table(fam_head, fam), Paragraph(T(FAMILY_NOTE), "note"))))
    return Section("ceiling", T("Seed ceiling"), 2, blocks, "Seed ceiling")


# ------------------------------------------------------------------------------------ prediction agreement


def _agreement_section(f: Facts, figs: _Figures) -> Section:
    extra = f.extra
    title, toc = T("Prediction agreement and outcome homogenization"), "Prediction agreement"
    if not any(k in extra for k in ("probes", "agreement", "homogenization")):
        return Section("agreement", title, 2, (Paragraph(T(
            "Not computed in this study: no probe, agreement or homogenization tables were given."), "note"),), toc)
    blocks: list = []
    meta = f.manifest.get("agreement")
    if isinstance(meta, Mapping):
        keep = [T(D(k), ": ", D(value_txt(v))) for k, v in meta.items() if k in _AGREEMENT_META]
        if keep:
            blocks.append(Paragraph(join(keep, "; ") + T("."), "note"))
    parts = (("Probe accuracy", "probes", "No probe table.", lambda df: _probes_blocks(df, f.models, figs)),
             ("Pairwise agreement of predictions", "agreement", "No agreement table.", _pairwise_blocks),
             ("Agreement over all models and outcome homogenization", "homogenization", "No homogenization table.",
              _sets_blocks))
    for sub, key, absent, make in parts:
        inner = make(extra[key]) if key in extra else (Paragraph(T(absent), "note"),)
        blocks.append(Section("", T(sub), 3, tuple(inner)))
    return Section("agreement", title, 2, tuple(blocks), toc)


def _probes_blocks(probes: pd.DataFrame, models: Sequence[str], figs: _Figures) -> tuple:
    grid = figs.grid([(probes_relpath(), "probe accuracy by relative depth")])
    order = {m: k for k, m in enumerate(models)}
    best = probe_best(probes)
    best = best.sort_values("model", key=lambda c: c.map(lambda x: order.get(x, 1e9)), kind="stable")
    rows = tuple((cell(B(r.model)), num_cell(f"{r.layer} / {r.last_layer}"), num_cell(f3(r.accuracy), bold=True),
                  num_cell(span(r.ci_low, r.ci_high)), num_cell(f3(r.final_accuracy)), num_cell(f3(r.chance)),
                  num_cell(int_txt(r.n_test))) for r in best.itertuples(index=False))
    head = header(["model", "best layer", "accuracy", "95% CI", "final-layer accuracy", "chance", "n test"],
                  numeric=range(1, 7))
    return (*grid, Table(head, rows))


def _agreement_value(r: Mapping[str, Any] | None) -> str:
    """``'0.810 (0.620) [0.760–0.860]'``: value, value if independent, interval."""
    if r is None:
        return EMPTY
    out = f3(r.get("value"))
    if finite(r.get("expected_independent")):
        out += f" ({f3(r.get('expected_independent'))})"
    if finite(r.get("ci_low"), r.get("ci_high")):
        out += f" [{span(r.get('ci_low'), r.get('ci_high'))}]"
    return out


def _pairwise_blocks(agree: pd.DataFrame) -> tuple:
    measures, rows_in = agreement_rows(agree)

    def side(x: tuple[str, int | None]) -> Text:
        return T(D(x[0]), f" (layer {x[1]})" if x[1] is not None else "")

    rows = []
    for r in rows_in:
        row = [Cell(_d(r["selection"])), cell(side(r["a"]), " and ", side(r["b"]))]
        for m in measures:
            fwd, rev = r["cells"].get(m, (None, None))
            value = _agreement_value(fwd)
            if rev is not None:
                value += f" / \u2190 {_agreement_value(rev)}"
            row.append(num_cell(EMPTY if fwd is None and rev is None else value))
        rows.append(tuple(row))
    head = header(["layers", "pair", *(T(C(m)) for m in measures)], numeric=range(2, 2 + len(measures)))
    labels = [T(C(m), ": ", AGREEMENT_LABELS[m]) for m in measures if m in AGREEMENT_LABELS]
    note = T("In parentheses: the value expected if the two models erred independently at their own error rates; in "
             "brackets: the 95% interval. A directional measure gives the first model \u2192 second model, then "
             "(\u2190) second \u2192 first.", *((" ", join(labels, "; "), ".") if labels else ()))
    return (Table(head, tuple(rows)), Paragraph(note, "note"))


def _sets_blocks(sets: pd.DataFrame) -> tuple:
    rows = tuple((Cell(_d(r.get("selection"))), cell(C(r.get("measure"))), Cell(_d(r.get("groups"))),
                  num_cell(f3(r.get("value")), bold=True), num_cell(f3(r.get("expected_independent"))),
                  num_cell(f3(r.get("null_mean"))), num_cell(p_txt(r.get("p_value"))), num_cell(int_txt(r.get("k"))),
                  num_cell(int_txt(r.get("n")))) for r in sets.to_dict("records"))
    head = header(["layers", "measure", "groups", "value", "if independent", "null mean", "p", "k models", "n"],
                  numeric=range(3, 9))
    return (Table(head, rows), Paragraph(T(SETS_NOTE), "note"))


# -------------------------------------------------------------------------------------------- provenance


def _provenance_section(f: Facts) -> Section:
    manifest, blocks = f.manifest, []
    versions = manifest.get("versions")
    if isinstance(versions, Mapping) and versions:
        rows = tuple((cell(D(k)), cell(D(value_txt(v)))) for k, v in versions.items())
        blocks.append(Section("", T("Versions"), 3, (Table(header(["component", "version"]), rows),)))
    if f.model_meta or f.corpus.get("fingerprint"):
        blocks.append(_fingerprints_section(f))
    controls = manifest.get("controls")
    controls = controls.get("random_init") if isinstance(controls, Mapping) else None
    if isinstance(controls, list) and controls:
        rows = tuple((cell(B(c.get("name") or "")), _code_cell(c.get("fingerprint")), cell(D(c.get("notes") or "")),
                      cell("reused" if c.get("reused") else "extracted")) for c in controls if isinstance(c, Mapping))
        head = header(["control", "fingerprint", "notes", "representations"])
        blocks.append(Section("", T("Random-init controls"), 3, (Table(head, rows),)))
    timings = manifest.get("timings")
    if isinstance(timings, Mapping) and timings:
        blocks.append(_timings_section(timings))
    warnings = [str(w) for w in (manifest.get("warnings") or []) if str(w).strip()]
    listed = BulletList(tuple(T(D(w)) for w in warnings)) if warnings else Paragraph(T("None."))
    blocks.append(Section("", T("Warnings raised during the run"), 3, (listed,)))
    if manifest.get("device"):
        blocks.append(Paragraph(T("Device: ", D(manifest["device"]), "."), "muted"))
    if manifest.get("run"):
        blocks.append(Paragraph(T("Run id: ", C(manifest["run"]), " (every file of this folder carries it)."),
                                "muted"))
    return Section("provenance", T("Provenance"), 2, tuple(blocks), "Provenance")


def _code_cell(v: Any) -> Cell:
    return cell(C(v)) if v not in (None, "") else cell(EMPTY)


def _fingerprints_section(f: Facts) -> Section:
    rows = []
    for m in f.model_meta:
        reused = "reused" if m.get("reused") else ("extracted" if "reused" in m else EMPTY)
        rows.append((cell(B(m.get("name") or "")), _code_cell(m.get("fingerprint")), Cell(_d(m.get("source_kind"))),
                     Cell(_d(m.get("spec"))), _code_cell(m.get("location")),
                     _code_cell(str(m.get("store_key") or "")[:16]), cell(reused)))
    corpus = f.corpus
    if corpus.get("fingerprint"):
        rows.append((cell("corpus ", D(corpus.get("name") or "")), _code_cell(corpus["fingerprint"]),
                     Cell(_d(corpus.get("source"))), cell(EMPTY), cell(EMPTY), cell(EMPTY), cell(EMPTY)))
    head = header(["model", "fingerprint", "source", "spec", "location", "store key", "representations"])
    return Section("", T("Fingerprints"), 3, (Table(head, tuple(rows)),))


def _timings_section(timings: Mapping[str, Any]) -> Section:
    """Seconds per stage and their share of the total (the recorded total, else the sum of the stages; a
    sub-stage ``stage/part`` counts toward it only where its stage is not listed)."""
    secs = {str(k): num(v) for k, v in timings.items()}
    recorded = secs.pop("total", math.nan)
    total = recorded if math.isfinite(recorded) else sum(
        v for k, v in secs.items() if math.isfinite(v) and ("/" not in k or k.split("/")[0] not in secs))
    rows = [(cell(D(k)), num_cell(seconds_txt(v)), num_cell(share_txt(v, total))) for k, v in secs.items()]
    rows.append((Cell(T("total"), bold=True), num_cell(seconds_txt(total), bold=True),
                 num_cell(share_txt(total, total))))
    return Section("", T("Timings"), 3, (Table(header(["stage", "seconds", "share"], numeric=(1, 2)), tuple(rows)),))
