"""The entry point a study calls after extraction: probes, agreement and homogenization in one go."""
from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .homogenization import H_MEASURES, homogenization_null, homogenization_terms
from .pairwise import agreement_table, fleiss_rows
from .probes import ProbeResult, _check_stacks, fit_probes
from .split import split_by_document

GROUPINGS = ("instances", "labels")

#: Column order of the agreement frame: DESIGN's tidy frame first, then the extras.
AGREEMENT_COLUMNS = [
    "model_a", "layer_a", "model_b", "layer_b", "measure", "value", "n", "d_a", "d_b", "unit",
    "expected_independent", "ci_low", "ci_high", "selection", "task",
]
#: Column order of the frame of measures over a set of models.
SET_COLUMNS = [
    "selection", "models", "layers", "k", "groups", "measure", "value", "expected_independent",
    "systemic_rate", "independent_rate", "null_mean", "p_value", "n", "n_groups", "unit", "task",
]


@dataclass
class AgreementResult:
    """What :func:`run_agreement` produced.

    Attributes:
        frames: ``{"probes": ..., "agreement": ..., "homogenization": ...}``:

            - ``probes``: ``model, layer, measure='probe_accuracy', value, ci_low, ci_high`` (Wilson
              95 %), ``n`` (test rows), ``n_train, d, n_classes, chance, val_accuracy, best,
              converged, n_iter, unit, task``;
            - ``agreement``: ``model_a, layer_a, model_b, layer_b, measure, value, n, d_a, d_b, unit,
              expected_independent, ci_low, ci_high, selection, task`` with measures ``agreement,
              cohen_kappa, error_overlap, error_overlap_conditional`` (both directions) and ``jsd``;
            - ``homogenization`` (``models`` and ``layers`` are JSON lists, in the same order):
              ``selection, models, layers, k, groups, measure, value,
              expected_independent, systemic_rate, independent_rate, null_mean, p_value, n,
              n_groups, unit, task`` with measures ``fleiss_kappa, systemic_failure, h_avg, h_unif,
              h_worst``.
        probes: the :class:`ProbeResult` (predictions, distributions, split, best layers).
        best_layers: ``{model: layer}`` chosen on held-out training documents.
        meta: JSON-able description for a manifest (task, classes, split sizes, settings, seconds).
    """

    frames: dict
    probes: ProbeResult
    best_layers: dict
    meta: dict = field(default_factory=dict)

    def tidy(self) -> pd.DataFrame:
        """The pairwise agreement rows in the column order of DESIGN's results frame
        (``model_a, layer_a, model_b, layer_b, measure, value, n, d_a, d_b, unit``, then
        ``expected_independent, ci_low, ci_high, selection, task``), ready to concatenate."""
        return self.frames["agreement"].copy()


def _check_corpus(corpus, n: int) -> None:
    name = getattr(corpus, "name", "corpus")
    if getattr(corpus, "labels", None) is None:
        raise ValueError(
            f"corpus {name!r} has no labels; probes and prediction agreement need a labelled corpus "
            "(the BBC News default, or a .jsonl/.csv file with label_column set)"
        )
    if getattr(corpus, "doc_ids", None) is None:
        raise ValueError(
            f"corpus {name!r} has no document ids; probes are split by document so that no document "
            "feeds both train and test (give doc_column for a .jsonl/.csv file)"
        )
    if len(corpus.labels) != n:
        raise ValueError(f"the stacks have n={n} rows but corpus {name!r} has {len(corpus.labels)}")


def _set_rows(
    selection: str, chosen: dict, probes: ProbeResult, groupings: Sequence[str], permutations: int, seed: int,
    unit: str,
) -> list[dict]:
    names = list(chosen)
    y = probes.y_test
    C = len(probes.classes)
    preds = np.stack([probes.predictions[(m, chosen[m])] for m in names])
    base = {
        "selection": selection, "models": json.dumps(names, ensure_ascii=False), "layers": json.dumps([int(chosen[m]) for m in names]),
        "k": len(names), "n": int(y.size), "unit": unit, "task": "probe",
    }
    rows = []
    try:
        kappa, kappa_ind = fleiss_rows(preds, y, C)
        rows.append({**base, "groups": "instances", "n_groups": int(y.size), "measure": "fleiss_kappa",
                     "value": kappa, "expected_independent": kappa_ind})
    except ValueError as err:
        warnings.warn(f"fleiss_kappa ({selection} layers) left out: {err}", RuntimeWarning, stacklevel=3)
    return rows + failure_rows(preds != y[None, :], base, groupings, y, permutations, seed, selection)


def failure_rows(
    failures: np.ndarray, base: dict, groupings: Sequence[str], labels, permutations: int, seed: int, where: str
) -> list[dict]:
    """Rows for ``systemic_failure`` and ``h_avg/h_unif/h_worst`` of a ``[k, n]`` failure matrix.

    ``base`` holds the columns shared by every row; ``labels`` (n true labels) define the groups
    of ``'labels'``. A grouping where some system never fails is left out with a warning.
    """
    rows = []
    rates = failures.mean(axis=1)
    rows.append({**base, "groups": "instances", "n_groups": int(failures.shape[1]), "measure": "systemic_failure",
                 "value": float(np.all(failures, axis=0).mean()), "expected_independent": float(np.prod(rates))})
    for grouping in groupings:
        groups = None if grouping == "instances" else labels
        try:
            t = homogenization_terms(failures, groups, names=json.loads(base.get("models", "null")))
        except ValueError as err:
            warnings.warn(f"homogenization ({where}, groups={grouping}) left out: {err}", RuntimeWarning,
                          stacklevel=3)
            continue
        null = homogenization_null(failures, groups, permutations=permutations, seed=seed) if permutations else None
        for m in H_MEASURES:
            part = m.split("_")[1]
            row = {**base, "groups": grouping, "n_groups": t["n_groups"], "measure": m, "value": t[m],
                   "systemic_rate": t[f"systemic_{part}"], "independent_rate": t["independent"],
                   "expected_independent": 1.0 if m != "h_worst" else np.nan}
            if null is not None:
                draws = null[m]
                row["null_mean"] = float(draws.mean())
                row["p_value"] = float((1 + np.sum(draws >= t[m] - 1e-12)) / (1 + draws.size))
                if m == "h_worst":
                    row["expected_independent"] = row["null_mean"]
            rows.append(row)
    return rows


def _check_inputs(stacks: Mapping, corpus, groupings: Sequence[str]) -> tuple[dict[str, torch.Tensor], int]:
    """Check the stacks (two or more models, one n), the corpus and the groupings.

    Returns ``({model: stack [L+1, n, d]}, n)``.
    """
    S = _check_stacks(stacks)
    if len(S) < 2:
        raise ValueError(f"stacks holds {len(S)} model(s); prediction agreement needs at least two")
    ns = {name: St.shape[1] for name, St in S.items()}
    if len(set(ns.values())) != 1:
        raise ValueError(f"stacks disagree on the number of rows n: {ns}")
    n = next(iter(ns.values()))
    _check_corpus(corpus, n)
    for g in groupings:
        if g not in GROUPINGS:
            raise ValueError(f"groupings: {g!r} is not one of {', '.join(GROUPINGS)}")
    return S, n


def _selections(S: dict, probes: ProbeResult) -> dict[str, dict]:
    """The layer selections to score: ``{'best': {model: layer}}``, plus ``'final'`` (each model's last
    layer) when every final layer was probed."""
    selections = {"best": dict(probes.best_layers)}
    final = {m: S[m].shape[0] - 1 for m in S}
    if all(final[m] in probes.layers[m] for m in S):
        selections["final"] = final
    return selections


def _selection_pairs(
    probes: ProbeResult, selection: str, keys: list, pair_kw: dict, pairs: list | None = None
) -> pd.DataFrame:
    """:func:`agreement_table` of the probes' test predictions at ``keys = [(model, layer), ...]``.

    ``pairs`` limits the pairs scored; the frame gets a ``selection`` column.
    """
    f = agreement_table({k: probes.predictions[k] for k in keys}, probes.y_test,
                        {k: probes.proba[k] for k in keys}, pairs=pairs, **pair_kw)
    f["selection"] = selection
    return f


def _asked_cells(layer_pairs: Sequence[tuple], S: dict, probes: ProbeResult, layers) -> list[tuple]:
    """Check ``layer_pairs`` entries ``(model_a, layer_a, model_b, layer_b)`` against the probed layers.

    Returns ``[((model_a, layer_a), (model_b, layer_b)), ...]`` with negative layers counted from the end.
    """
    asked = []
    for cell in layer_pairs:
        if len(cell) != 4:
            raise ValueError(f"layer_pairs entry {cell!r} must be (model_a, layer_a, model_b, layer_b)")
        ma, la, mb, lb = str(cell[0]), int(cell[1]), str(cell[2]), int(cell[3])
        asked.append((_probed_layer(ma, la, S, probes, layers), _probed_layer(mb, lb, S, probes, layers)))
    return asked


def _probed_layer(model: str, layer: int, S: dict, probes: ProbeResult, layers) -> tuple[str, int]:
    """Return ``(model, layer)`` with a negative layer counted from the end; ValueError unless it was probed."""
    if model not in S:
        raise ValueError(f"layer_pairs: model {model!r} is not among the stacks {list(S)}")
    j = layer + S[model].shape[0] if layer < 0 else layer
    if j not in probes.layers[model]:
        raise ValueError(f"layer_pairs: layer {layer} of model {model!r} was not probed (layers={layers!r})")
    return model, j


def _pair_frames(
    probes: ProbeResult, selections: dict, layer_pairs: Sequence[tuple] | None, S: dict, layers, pair_kw: dict
) -> list[pd.DataFrame]:
    """Pairwise agreement at every selection's layers, then at the ``layer_pairs`` cells ('asked').

    Returns one :func:`_selection_pairs` frame per selection (and one for the asked cells).
    """
    frames = [_selection_pairs(probes, sel, [(m, chosen[m]) for m in S], pair_kw)
              for sel, chosen in selections.items()]
    if layer_pairs:
        asked = _asked_cells(layer_pairs, S, probes, layers)
        keys = list(dict.fromkeys(k for pair in asked for k in pair))
        frames.append(_selection_pairs(probes, "asked", keys, pair_kw, pairs=asked))
    return frames


def _agreement_frame(frames: list[pd.DataFrame], S: dict, unit: str) -> pd.DataFrame:
    """Join the pair frames into the agreement frame: widths ``d_a, d_b``, ``unit``, ``task``, empty
    intervals where there was no bootstrap, columns in :data:`AGREEMENT_COLUMNS` order."""
    widths = {m: int(S[m].shape[2]) for m in S}
    agreement = pd.concat(frames, ignore_index=True)
    agreement["d_a"] = agreement["model_a"].map(widths).astype("int64")
    agreement["d_b"] = agreement["model_b"].map(widths).astype("int64")
    agreement["unit"] = unit
    agreement["task"] = "probe"
    for c in ("ci_low", "ci_high"):
        if c not in agreement:
            agreement[c] = np.nan
    return agreement[AGREEMENT_COLUMNS]


def _set_frame(set_rows: list[dict]) -> pd.DataFrame:
    """The homogenization frame of :func:`_set_rows` rows, in :data:`SET_COLUMNS` order."""
    sets = pd.DataFrame(set_rows).reindex(columns=SET_COLUMNS)
    for c in ("k", "n", "n_groups"):
        sets[c] = sets[c].astype("int64")
    return sets


def _probe_frame(probes: ProbeResult, unit: str) -> pd.DataFrame:
    """A copy of the probes' frame with the ``unit`` and ``task`` columns."""
    probe_frame = probes.frame.copy()
    probe_frame["unit"] = unit
    probe_frame["task"] = "probe"
    return probe_frame


def _run_meta(
    probes: ProbeResult, docs: list, train: np.ndarray, test: np.ndarray, n: int, *, test_size: float,
    select: str, bootstrap: int, permutations: int, groupings: Sequence[str], seconds: dict,
) -> dict:
    """The JSON-able ``meta`` of an :class:`AgreementResult`: task, classes, split sizes in rows and
    documents, best layers, settings and ``seconds``."""
    doc_array = np.asarray(docs, dtype=object)
    return {
        "task": "label",
        "classes": [str(c) for c in probes.classes],
        "n": n,
        "n_train": int(train.size),
        "n_test": int(test.size),
        "train_documents": len(set(doc_array[train].tolist())),
        "test_documents": len(set(doc_array[test].tolist())),
        "test_size": test_size,
        "best_layers": {m: int(v) for m, v in probes.best_layers.items()},
        "select": select,
        "probe": probes.settings,
        "bootstrap": bootstrap,
        "permutations": permutations,
        "groupings": list(groupings),
        "seconds": seconds,
    }


def run_agreement(
    stacks: Mapping[str, torch.Tensor],
    corpus,
    *,
    layers="all",
    test_size: float = 0.3,
    seed: int = 0,
    layer_pairs: Sequence[tuple] | None = None,
    select: str = "validation",
    groupings: Sequence[str] = GROUPINGS,
    bootstrap: int = 0,
    permutations: int = 1000,
    C: float = 1.0,
    max_iter: int = 200,
    n_jobs: int = 1,
    unit: str = "sentence",
) -> AgreementResult:
    """Probe every model, then measure how alike their predictions and failures are.

    Steps: split the corpus by document (:func:`split_by_document`, stratified by label); fit one
    probe per model and layer (:func:`fit_probes`); choose each model's best layer on held-out
    training documents; score every model pair on the test rows at the best layers
    (``selection = 'best'``), at the final layers (``'final'``, when probed) and at any
    ``layer_pairs`` (``'asked'``) with :func:`agreement_table`; and score the set of all models
    (Fleiss' kappa, systemic failure, homogenization of Bommasani et al. 2022) at the best and the
    final layers.

    Args:
        stacks: ``{model: tensor [L+1, n, d]}`` from extraction, rows in corpus order.
        corpus: a :class:`homoscope.corpora.Corpus` with ``labels`` and ``doc_ids``.
        layers: layers to probe: ``'all'`` (default), ``'last'``, a list, or ``{model: list}``.
        test_size: share of rows (whole documents) held out for testing.
        seed: split, probe, bootstrap and permutation seed.
        layer_pairs: extra ``(model_a, layer_a, model_b, layer_b)`` cells to score; both layers
            must be probed.
        select: ``'validation'`` (default) or ``'test'``, see :func:`fit_probes`.
        groupings: homogenization groups: ``'instances'`` and/or ``'labels'``.
        bootstrap: resamples of test documents for 95 % intervals of pairwise values (0 = none).
        permutations: permutation-null draws for homogenization (0 = none).
        C, max_iter, n_jobs: probe settings (see :func:`fit_probes`).
        unit: the representation unit recorded in the frames.

    Returns:
        :class:`AgreementResult` (its three frames' columns are listed there).

    Raises:
        ValueError: a corpus without labels or document ids, fewer than two models, stacks whose
            n differs from the corpus, an unknown grouping, a ``layer_pairs`` cell that was not
            probed, and every error of :func:`split_by_document` and :func:`fit_probes`.
    """
    t0 = time.perf_counter()
    S, n = _check_inputs(stacks, corpus, groupings)
    labels, docs = list(corpus.labels), list(corpus.doc_ids)
    train, test = split_by_document(docs, test_size, seed, labels=labels)
    t_split = time.perf_counter()
    probes = fit_probes(S, labels, train, test, layers, seed, select=select, groups=docs, C=C,
                        max_iter=max_iter, n_jobs=n_jobs)
    t_probe = time.perf_counter()

    selections = _selections(S, probes)
    test_docs = np.asarray(docs, dtype=object)[test]
    pair_kw = {"bootstrap": bootstrap, "groups": test_docs if bootstrap else None, "seed": seed}
    agreement = _agreement_frame(_pair_frames(probes, selections, layer_pairs, S, layers, pair_kw), S, unit)
    set_rows = []
    for sel, chosen in selections.items():
        set_rows += _set_rows(sel, chosen, probes, groupings, permutations, seed, unit)
    sets = _set_frame(set_rows)
    probe_frame = _probe_frame(probes, unit)
    t_end = time.perf_counter()
    seconds = {"split": t_split - t0, "probes": t_probe - t_split, "agreement": t_end - t_probe,
               "total": t_end - t0}
    meta = _run_meta(probes, docs, train, test, n, test_size=test_size, select=select, bootstrap=bootstrap,
                     permutations=permutations, groupings=groupings, seconds=seconds)
    return AgreementResult(
        frames={"probes": probe_frame, "agreement": agreement, "homogenization": sets},
        probes=probes, best_layers=dict(probes.best_layers), meta=meta,
    )
