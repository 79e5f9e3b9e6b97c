"""Tables, figures and the markdown and html reports of a homoscope study.

Everything derives from these inputs and never recomputes a measure:

- the tidy results frame: one row per (model_a, layer_a, model_b, layer_b, measure) with ``value``,
  ``n``, ``d_a``, ``d_b``, ``unit`` and, where computed, ``ci_low``, ``ci_high``, ``null_mean``,
  ``null_std``, ``p_value``, ``random_init``. Layer 0 is the embedding output. Pairs are distinct
  models in study order; an asymmetric measure carries both directions as separate rows;
- the study manifest (corpus, models, versions, timings, warnings, commands);
- optionally the prediction-agreement frames (``probes``, ``agreement``, ``homogenization``).

:func:`write_outputs` writes tables, figures, ``findings.json``, ``report.md`` and a self-contained
``report.html``; :func:`rebuild_report` does the same from a results folder (:func:`load_results`), without
a model. The analysis is computed once (:func:`gather`: controls, index, findings, per-measure summaries)
and laid out once as a document (:func:`build_document`); ``findings.json`` saves the same objects, and the
two reports are Jinja2 renderings of that one document (templates in ``homoscope/report/templates``).

How to read a measure (similarity or distance, its range, symmetry, reference) comes from a
``measure_info(name)`` callable, by default the measure registry or a built-in table.
"""
from __future__ import annotations

from ._measures import MeasureInfo, resolve_measure_info
from .analysis import (
    CEILING_DEFINITION,
    INDEX_DEFINITION,
    NULL_RULE,
    HomogenizationIndex,
    MeasureSummary,
    compare_view,
    controls_table,
    family_table,
    findings,
    homogenization_index,
    measure_summary,
    seed_ceilings,
)
from .builder import build_document, findings_record, gather
from .figures import plot_controls, plot_dendrogram, plot_layer_heatmap, plot_probes, plot_summary_heatmap
from .html import write_report_html
from .markdown import escape_md, write_report_md
from .outputs import EXTRA_TABLES, write_findings, write_manifest, write_outputs
from .results import load_results, rebuild_report
from .tables import SUMMARY_COLUMNS, layer_matrix, summary_matrix, summary_table, write_tables

__all__ = [
    "write_tables",
    "plot_layer_heatmap",
    "plot_summary_heatmap",
    "plot_dendrogram",
    "summary_table",
    "summary_matrix",
    "layer_matrix",
    "plot_controls",
    "plot_probes",
    "write_report_md",
    "write_report_html",
    "write_manifest",
    "write_findings",
    "gather",
    "build_document",
    "findings_record",
    "measure_summary",
    "MeasureSummary",
    "write_outputs",
    "load_results",
    "rebuild_report",
    "EXTRA_TABLES",
    "controls_table",
    "homogenization_index",
    "HomogenizationIndex",
    "findings",
    "compare_view",
    "INDEX_DEFINITION",
    "CEILING_DEFINITION",
    "seed_ceilings",
    "family_table",
    "NULL_RULE",
    "escape_md",
    "MeasureInfo",
    "resolve_measure_info",
    "SUMMARY_COLUMNS",
]
