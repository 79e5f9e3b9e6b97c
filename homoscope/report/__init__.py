"""Tables, figures and the markdown report of a homoscope study.

Everything derives from two inputs and never recomputes a measure:

- the tidy results frame: one row per (model_a, layer_a, model_b, layer_b, measure) with ``value``,
  ``n``, ``d_a``, ``d_b``, ``unit`` and, where computed, ``ci_low``, ``ci_high``, ``null_mean``,
  ``null_std``, ``p_value``. Layer 0 is the embedding output. Pairs are distinct models in study order;
  an asymmetric measure carries both directions as separate rows;
- the study manifest (corpus, models, versions, timings, warnings, commands).

How to read a measure (similarity or distance, its range, symmetry, reference) comes from a
``measure_info(name)`` callable, by default the measure registry or a built-in table.
"""
from __future__ import annotations

from ._measures import BUILTIN_MEASURES, MeasureInfo, builtin_measure_info, resolve_measure_info
from .figures import plot_dendrogram, plot_layer_heatmap, plot_summary_heatmap
from .markdown import escape_md, write_report_md
from .outputs import write_manifest, write_outputs
from .tables import SUMMARY_COLUMNS, layer_matrix, summary_matrix, summary_table, write_tables

__all__ = [
    "write_tables",
    "plot_layer_heatmap",
    "plot_summary_heatmap",
    "plot_dendrogram",
    "summary_table",
    "summary_matrix",
    "layer_matrix",
    "write_report_md",
    "write_manifest",
    "write_outputs",
    "escape_md",
    "MeasureInfo",
    "BUILTIN_MEASURES",
    "builtin_measure_info",
    "resolve_measure_info",
    "SUMMARY_COLUMNS",
]
