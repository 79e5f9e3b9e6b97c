"""Prediction agreement: linear probes, agreement between models' predictions, outcome homogenization.

Representations can be alike while predictions differ, and the reverse. This package measures the
outcome side on the same corpus and models as the similarity measures (Bommasani et al. 2021,
"On the Opportunities and Risks of Foundation Models", sec. 5.6 on homogenization; Bommasani et
al. 2022, "Picking on the Same Person").

Public API
----------
- :func:`split_by_document` ``(doc_ids, test_size=0.3, seed=0, *, labels=None) -> (train_idx, test_idx)``:
  int64 row positions; no document on both sides.
- :func:`fit_probes` ``(stacks, labels, train_idx, test_idx, layers='all', seed=0, *, select, groups,
  C, max_iter, n_jobs) -> ProbeResult``: one standardised logistic-regression probe per model and
  layer; accuracy with a Wilson 95 % interval, test predictions and class distributions, best layer
  per model chosen on held-out training documents.
- :func:`agreement_table` ``(pred, y_true, proba=None, *, pairs, bootstrap, groups, seed) -> DataFrame``:
  ``agreement``, ``cohen_kappa``, ``error_overlap``, ``error_overlap_conditional``, ``jsd``
  for every pair, each with ``expected_independent`` (the value if the models erred independently
  at their own rates; see :mod:`homoscope.agreement.pairwise`).
- :func:`cohen_kappa` ``(a, b) -> float`` (Cohen 1960), :func:`fleiss_kappa` ``(counts [N, C]) -> float``
  (Fleiss 1971) with :func:`category_counts` ``(ratings [k, n]) -> counts``, :func:`jsd` (bits).
- :func:`homogenization` ``(failures [k, n], groups=None) -> {"h_avg", "h_unif", "h_worst"}``
  (Bommasani et al. 2022; ``groups`` None = instances, or n group ids such as labels), with
  :func:`homogenization_terms` and the permutation null :func:`homogenization_null`.
- :func:`native_head_agreement` ``(loaded_models, texts, ...) -> NativeHeadResult``: masked-token
  or next-token top-1 agreement and JSD of models' own heads, for models sharing a tokenizer
  (refused with a ValueError otherwise); :func:`tokenizer_groups` finds such groups.
- :func:`run_agreement` ``(stacks, corpus, *, layers='all', test_size=0.3, seed=0, ...) -> AgreementResult``:
  everything above from extracted stacks ``{model: [L+1, n, d]}`` and a labelled corpus with
  document ids; ``.frames`` holds the ``probes``, ``agreement`` and ``homogenization`` frames.
"""
from __future__ import annotations

from .homogenization import H_MEASURES, homogenization, homogenization_null, homogenization_terms
from .native import NativeHeadResult, native_head_agreement, tokenizer_difference, tokenizer_groups
from .pairwise import (
    PAIR_MEASURES,
    agreement_table,
    category_counts,
    cohen_kappa,
    confusion,
    expected_agreement,
    fleiss_kappa,
    jsd,
)
from .probes import ProbeResult, fit_probes, wilson_interval
from .run import AGREEMENT_COLUMNS, GROUPINGS, SET_COLUMNS, AgreementResult, run_agreement
from .split import split_by_document

#: Measures over a set of k models (the ``homogenization`` frame).
SET_MEASURES = ("fleiss_kappa", "systemic_failure", *H_MEASURES)
#: Every measure name this package writes.
AGREEMENT_MEASURES = (*PAIR_MEASURES, *SET_MEASURES, "probe_accuracy", "native_top1_accuracy")

__all__ = [
    "AGREEMENT_COLUMNS",
    "AGREEMENT_MEASURES",
    "AgreementResult",
    "GROUPINGS",
    "H_MEASURES",
    "NativeHeadResult",
    "PAIR_MEASURES",
    "ProbeResult",
    "SET_COLUMNS",
    "SET_MEASURES",
    "agreement_table",
    "category_counts",
    "cohen_kappa",
    "confusion",
    "expected_agreement",
    "fit_probes",
    "fleiss_kappa",
    "homogenization",
    "homogenization_null",
    "homogenization_terms",
    "jsd",
    "native_head_agreement",
    "run_agreement",
    "split_by_document",
    "tokenizer_difference",
    "tokenizer_groups",
    "wilson_interval",
]
