"""Tables derived from the results frame: the stored frame, per-pair summaries and matrices.

Everything here reads the tidy results frame (one row per model pair, layer pair and measure) and
never recomputes a measure.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._paths import atomic_path
from ._common import bh_adjust, check_frame, column, model_order, pairs_of, select
from ._measures import MeasureInfo, resolve_measure_info

__all__ = ["write_tables", "summary_table", "summary_cache", "layer_matrix", "summary_matrix", "SUMMARY_COLUMNS"]

#: Columns of :func:`summary_table`, in order.
SUMMARY_COLUMNS = [
    "model_a", "model_b", "measure", "kind", "unit", "n", "d_a", "d_b", "layers_a", "layers_b",
    "best", "best_layer_a", "best_layer_b", "best_depth_a", "best_depth_b",
    "best_ci_low", "best_ci_high", "best_p_value", "best_q_value", "best_null_mean", "best_null_std",
    "best_random_init",
    "final", "final_layer_a", "final_layer_b", "final_ci_low", "final_ci_high", "final_p_value", "final_q_value",
    "final_null_mean", "final_null_std", "final_random_init", "mean",
]

#: Per-cell control columns carried into the summary at the best and at the final layer pair.
_CELL_COLUMNS = ("ci_low", "ci_high", "p_value", "q_value", "null_mean", "null_std", "random_init")


#: The column that carries a run's id in every table a run writes.
RUN_COLUMN = "run"


def with_run(frame: pd.DataFrame, run: str | None) -> pd.DataFrame:
    """``frame`` with the run's id as its last column :data:`RUN_COLUMN` (``frame`` itself where ``run`` is None)."""
    if run is None:
        return frame
    return frame.drop(columns=[RUN_COLUMN], errors="ignore").assign(**{RUN_COLUMN: run})


def write_tables(frame: pd.DataFrame, out_dir: str | os.PathLike, *, run: str | None = None) -> list[Path]:
    """Write the results frame as ``similarity.parquet`` and ``similarity.csv`` in ``out_dir``.

    Each file is written to a temporary name and moved into place with ``os.replace``, so a reader
    never sees half a file. The index is not stored (the frame is tidy); reading the parquet back gives
    a frame equal to ``frame`` with a fresh RangeIndex. CSV floats are written at full precision.

    Args:
        frame: the tidy results frame (see :func:`homoscope.report.write_outputs`).
        out_dir: folder to write into; created if missing.
        run: the run's id, written as the last column ``run`` of both files (see :func:`with_run`).

    Returns:
        ``[parquet_path, csv_path]``.

    Raises:
        ValueError / TypeError: ``frame`` is not a valid results frame.
    """
    check_frame(frame)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = with_run(frame.reset_index(drop=True), run)
    parquet, csv = out / "similarity.parquet", out / "similarity.csv"
    with atomic_path(parquet) as tmp:
        data.to_parquet(tmp, index=False)
    with atomic_path(csv) as tmp:
        data.to_csv(tmp, index=False)
    return [parquet, csv]


def pair_rows(
    frame: pd.DataFrame, model_a: str, model_b: str, measure: str, info: MeasureInfo,
) -> tuple[pd.DataFrame, bool]:
    """Rows of one pair and measure, and whether they are stored as (model_b, model_a).

    The stored order is used for a symmetric measure whose rows name the pair the other way round.

    Raises:
        ValueError: no rows for the pair (in either order for a symmetric measure).
    """
    sub = select(frame, measure)
    rows = sub[(sub["model_a"] == model_a) & (sub["model_b"] == model_b)]
    if not rows.empty:
        return rows, False
    if info.symmetric:
        rows = sub[(sub["model_a"] == model_b) & (sub["model_b"] == model_a)]
        if not rows.empty:
            return rows, True
    raise ValueError(
        f"frame has no rows for model_a={model_a!r}, model_b={model_b!r}, measure={measure!r}"
        f"{'' if info.symmetric else ' (asymmetric measure: direction matters)'}; pairs present: {pairs_of(sub)}"
    )


def layer_matrix(
    frame: pd.DataFrame, model_a: str, model_b: str, measure: str, *,
    measure_info: Callable[[str], Any] | None = None,
) -> pd.DataFrame:
    """The layer-by-layer matrix of one measure for one pair of models.

    Returns a DataFrame indexed by ``model_a``'s layers (0 = embeddings, rows) with ``model_b``'s layers
    as columns, covering 0..last layer on each side; layer pairs without a row are NaN. For a
    symmetric measure stored only as (model_b, model_a) the stored matrix is transposed.

    Raises:
        ValueError: no rows for this pair and measure (in either order for a symmetric measure).
    """
    check_frame(frame)
    info = resolve_measure_info(measure, measure_info)
    rows, transposed = pair_rows(frame, model_a, model_b, measure, info)
    la, lb = ("layer_b", "layer_a") if transposed else ("layer_a", "layer_b")
    ia = rows[la].astype(int).to_numpy()
    ib = rows[lb].astype(int).to_numpy()
    m = np.full((ia.max() + 1, ib.max() + 1), np.nan)
    m[ia, ib] = rows["value"].astype(float).to_numpy()
    return pd.DataFrame(m, index=pd.RangeIndex(m.shape[0], name="layer_a"),
                        columns=pd.RangeIndex(m.shape[1], name="layer_b"))


def _pick(values: np.ndarray, info: MeasureInfo) -> int | None:
    if not np.isfinite(values).any():
        return None
    return int(np.nanargmax(values) if info.higher_is_more_alike else np.nanargmin(values))


_CACHE: ContextVar[dict | None] = ContextVar("homoscope_summary_cache", default=None)


@contextmanager
def summary_cache() -> Iterator[None]:
    """Within this block, :func:`summary_table` computes each (frame, measure, description) once.

    The report reads the same summaries for tables, figures, findings and both report formats; the
    frame must not change inside the block. Nested blocks share the outer cache.
    """
    if _CACHE.get() is not None:
        yield
        return
    token = _CACHE.set({})
    try:
        yield
    finally:
        _CACHE.reset(token)


def summary_table(
    frame: pd.DataFrame, measure: str, *, measure_info: Callable[[str], Any] | None = None,
) -> pd.DataFrame:
    """One row per (ordered) model pair summarising a measure over all layer pairs.

    For a similarity ``best`` is the largest value over all layer pairs; for a distance the smallest.
    Ties go to the first row in frame order. Relative depth = layer / last layer of that model in the
    pair's rows (0 = embeddings, 1 = last layer). ``final`` is the value at (last layer of a, last layer
    of b), NaN where that cell is missing. ``mean`` is the mean over all layer pairs (NaN skipped).
    An asymmetric measure gives one row per direction present.

    Columns (see :data:`SUMMARY_COLUMNS`): model_a, model_b, measure, kind, unit, n, d_a, d_b,
    layers_a, layers_b (number of layers incl. embeddings), best, best_layer_a, best_layer_b,
    best_depth_a, best_depth_b, best_ci_low, best_ci_high (bootstrap interval), best_p_value
    (permutation test), best_q_value (Benjamini-Hochberg adjusted p over all layer pairs of this model
    pair and measure), best_null_mean, best_null_std (permutation null), best_random_init (the
    random-init control at the same layers), final, final_layer_a, final_layer_b, the same seven
    control columns at the final layer pair (``final_*``), mean. Control columns are NaN where the
    frame does not have them. Rows follow the order of first appearance in the frame.

    Raises:
        ValueError: the frame is invalid or has no rows for ``measure``.
    """
    check_frame(frame)
    select(frame, measure)  # a frame without the measure fails before the measure is looked up
    cache = _CACHE.get()
    info = resolve_measure_info(measure, measure_info)
    key = (id(frame), measure, info)
    if cache is not None and key in cache and cache[key][0] is frame:
        return cache[key][1].copy()
    out = _summary_table(frame, measure, info)
    if cache is not None:
        cache[key] = (frame, out)
        return out.copy()
    return out


def _summary_table(frame: pd.DataFrame, measure: str, info: MeasureInfo) -> pd.DataFrame:
    sub = select(frame, measure)
    records = []
    for (a, b), g in sub.groupby(["model_a", "model_b"], sort=False):
        g = g.reset_index(drop=True)
        values = g["value"].astype(float).to_numpy()
        la = g["layer_a"].astype(int).to_numpy()
        lb = g["layer_b"].astype(int).to_numpy()
        last_a, last_b = int(la.max()), int(lb.max())
        k = _pick(values, info)
        fin = np.flatnonzero((la == last_a) & (lb == last_b))
        cells = {c: column(g, c) for c in _CELL_COLUMNS if c != "q_value"}
        cells["q_value"] = bh_adjust(cells["p_value"])
        rec = {
            "model_a": str(a),
            "model_b": str(b),
            "measure": measure,
            "kind": info.kind,
            "unit": str(g["unit"].iloc[0]) if "unit" in g else None,
            "n": int(g["n"].min()) if "n" in g and g["n"].notna().any() else pd.NA,
            "d_a": int(g["d_a"].iloc[0]) if "d_a" in g and pd.notna(g["d_a"].iloc[0]) else pd.NA,
            "d_b": int(g["d_b"].iloc[0]) if "d_b" in g and pd.notna(g["d_b"].iloc[0]) else pd.NA,
            "layers_a": last_a + 1,
            "layers_b": last_b + 1,
            "best": float(values[k]) if k is not None else math.nan,
            "best_layer_a": int(la[k]) if k is not None else pd.NA,
            "best_layer_b": int(lb[k]) if k is not None else pd.NA,
            "best_depth_a": la[k] / last_a if k is not None and last_a else (0.0 if k is not None else math.nan),
            "best_depth_b": lb[k] / last_b if k is not None and last_b else (0.0 if k is not None else math.nan),
            "final": float(values[fin[0]]) if len(fin) else math.nan,
            "final_layer_a": last_a,
            "final_layer_b": last_b,
            "mean": float(np.nanmean(values)) if np.isfinite(values).any() else math.nan,
        }
        for c in _CELL_COLUMNS:
            rec[f"best_{c}"] = float(cells[c][k]) if k is not None else math.nan
            rec[f"final_{c}"] = float(cells[c][fin[0]]) if len(fin) else math.nan
        records.append(rec)
    out = pd.DataFrame.from_records(records, columns=SUMMARY_COLUMNS)
    for col in ("n", "d_a", "d_b", "best_layer_a", "best_layer_b"):
        out[col] = out[col].astype("Int64")
    for col in ("layers_a", "layers_b", "final_layer_a", "final_layer_b"):
        out[col] = out[col].astype("int64")
    return out


def summary_matrix(
    frame: pd.DataFrame, measure: str, *, models: Sequence[str] | None = None, how: str = "best",
    measure_info: Callable[[str], Any] | None = None, field: str | None = None,
) -> pd.DataFrame:
    """Model-by-model matrix of one measure.

    ``how='best'``: best value over all layer pairs (max for a similarity, min for a distance);
    ``how='final'``: last layer vs last layer. Entry [i, j] comes from the rows (model_a=i, model_b=j);
    for a symmetric measure a missing (j, i) is mirrored from (i, j). The diagonal holds the identity
    value (1 for a bounded similarity, 0 for a distance). Missing pairs are NaN. Rows and columns
    are exactly ``models`` in the order given (pairs with other models are left out), else all
    models of the frame in study order. ``field`` picks another column of :func:`summary_table` for
    the cells (e.g. ``'best_q_value'``); its diagonal is NaN.

    Raises:
        ValueError: ``how`` is not 'best' or 'final', or no rows for ``measure``.
    """
    if how not in ("best", "final"):
        raise ValueError(f"how={how!r} must be 'best' or 'final'")
    check_frame(frame)
    sub = select(frame, measure)
    info = resolve_measure_info(measure, measure_info)
    order = [str(x) for x in dict.fromkeys(models)] if models is not None else model_order(sub)
    table = summary_table(sub, measure, measure_info=lambda _name: info)
    m = pd.DataFrame(np.nan, index=pd.Index(order, name="model_a"), columns=pd.Index(order, name="model_b"))
    table = table[table["model_a"].isin(order) & table["model_b"].isin(order)]
    key = field or how
    if key not in table.columns:
        raise ValueError(f"field={field!r} is not a column of the summary table; columns: {SUMMARY_COLUMNS}")
    for rec in table.itertuples(index=False):
        m.loc[rec.model_a, rec.model_b] = getattr(rec, key)
    if info.symmetric:
        for rec in table.itertuples(index=False):
            if pd.isna(m.loc[rec.model_b, rec.model_a]):
                m.loc[rec.model_b, rec.model_a] = getattr(rec, key)
    for name in order:
        m.loc[name, name] = info.identity if field is None else np.nan
    return m
