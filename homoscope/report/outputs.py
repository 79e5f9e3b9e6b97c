"""Everything a study writes after its measures: tables, figures, manifest and the markdown report."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ._common import atomic_path, atomic_write_text, check_frame, file_stems, inside, measures_of, model_order, pairs_of
from ._measures import manifest_measure_info, resolve_measure_info
from .figures import plot_dendrogram, plot_layer_heatmap, plot_summary_heatmap
from .markdown import dendrogram_relpath, heatmap_relpath, summary_relpath, write_report_md
from .tables import summary_table, write_tables

__all__ = ["write_outputs", "write_manifest"]

#: Show a progress bar for the figure loop from this many figures on.
PROGRESS_MIN_FIGURES = 12


def write_manifest(manifest: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``manifest.json`` (indent 2, UTF-8, keys in the given order) atomically; returns its path.

    Values JSON cannot hold (paths, numpy scalars, datetimes) are written as strings.
    """
    text = json.dumps(_jsonable(manifest), indent=2, ensure_ascii=False, allow_nan=True, default=str)
    return atomic_write_text(Path(out_dir) / "manifest.json", text + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        return obj.item()  # numpy / torch scalars
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_outputs(
    frame: pd.DataFrame, manifest: Mapping[str, Any], out_dir: str | os.PathLike, *,
    measure_info: Callable[[str], Any] | None = None, progress: bool = True,
) -> dict[str, list[Path]]:
    """Write every output of a study into ``out_dir``.

    - ``similarity.parquet``, ``similarity.csv``: the results frame; ``summary.csv``: one row per
      model pair and measure (see :func:`summary_table`);
    - ``heatmaps/<measure>__<a>__vs__<b>.png``: one layer-by-layer heatmap per pair and measure
      (both directions for an asymmetric measure);
    - ``summary_<measure>_best.png``, ``summary_<measure>_final.png``: model-by-model matrices, and
      ``dendrogram_<measure>.png`` where there are 3 or more models and every pair has a value;
    - ``manifest.json`` (indent 2) and ``report.md``.

    Model and measure names are sanitized in file names (``homoscope._paths.safe_name``; names that
    would collide get a short hash) and every path is checked to stay inside ``out_dir``. Each file is
    written to a temporary name and moved into place. Figures are drawn on the Agg canvas and cleared
    after saving. Models appear in the order of ``manifest['models']`` where given, else study order.

    Args:
        frame: the tidy results frame: model_a, layer_a, model_b, layer_b, measure, value, n, d_a, d_b,
            unit, and optionally ci_low, ci_high, null_mean, null_std, p_value.
        manifest: the study manifest (JSON-able dict; see :func:`write_report_md`).
        out_dir: output folder, created if missing.
        measure_info: callable ``name -> dict-like`` describing a measure (kind, value_range,
            symmetric, reference); default: ``manifest['measures'][name]`` where recorded, else
            ``homoscope.measures.get_measure``, else the built-in table.
        progress: show a tqdm bar over the figures when there are many.

    Returns:
        ``{'tables': [...], 'heatmaps': [...], 'summaries': [...], 'manifest': [...], 'report': [...]}``.

    Raises:
        ValueError / TypeError: ``frame`` is not a valid results frame, or it is empty.
    """
    check_frame(frame)
    if frame.empty:
        raise ValueError("frame is empty: there is nothing to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = manifest or {}
    measure_info = measure_info or manifest_measure_info(manifest)
    names = [str(m.get("name")) for m in (manifest.get("models") or []) if isinstance(m, Mapping) and m.get("name")]
    order = [m for m in model_order(frame, names) if m in set(model_order(frame))]
    stems = file_stems(sorted(set(order)))
    measures = measures_of(frame)
    infos = {m: resolve_measure_info(m, measure_info) for m in measures}

    result: dict[str, list[Path]] = {"tables": [], "heatmaps": [], "summaries": [], "manifest": [], "report": []}
    result["tables"] += write_tables(frame, out)
    summary = pd.concat([summary_table(frame, m, measure_info=lambda _n, i=infos[m]: i) for m in measures],
                        ignore_index=True)
    with atomic_path(out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    result["tables"].append(out / "summary.csv")

    # one job per figure; each gets only its own rows so that validation stays cheap
    jobs: list[tuple[str, Callable[[], Path]]] = []
    for m in measures:
        info = infos[m]
        sub = frame[frame["measure"] == m]
        by_pair = dict(tuple(sub.groupby(["model_a", "model_b"], sort=False)))
        for a, b in pairs_of(sub):
            path = inside(out / heatmap_relpath(m, a, b, stems), out)
            rows = by_pair[(a, b)]
            jobs.append(("heatmaps", lambda rows=rows, a=a, b=b, m=m, path=path, info=info: plot_layer_heatmap(
                rows, a, b, m, path, measure_info=lambda _n: info)))
        present = [x for x in order if x in set(model_order(sub))]
        for how in ("best", "final"):
            path = inside(out / summary_relpath(m, how), out)
            jobs.append(("summaries", lambda sub=sub, m=m, path=path, how=how, info=info, present=present:
                         plot_summary_heatmap(sub, m, path, models=present, how=how, measure_info=lambda _n: info)))
        if len(present) >= 3:
            path = inside(out / dendrogram_relpath(m), out)
            jobs.append(("summaries", lambda sub=sub, m=m, path=path, info=info, present=present:
                         _maybe_dendrogram(sub, m, path, present, info)))

    bar = tqdm(jobs, desc="figures", unit="fig", disable=not (progress and len(jobs) >= PROGRESS_MIN_FIGURES),
               leave=False)
    for key, job in bar:
        path = job()
        if path is not None:
            result[key].append(path)

    result["manifest"].append(write_manifest(manifest, out))
    figures = {"heatmaps": result["heatmaps"], "summaries": result["summaries"]}
    result["report"].append(write_report_md(frame, manifest, out, figures, measure_info=lambda n: infos[n]))
    return result


def _maybe_dendrogram(sub: pd.DataFrame, measure: str, path: Path, models: list[str], info) -> Path | None:
    """A dendrogram where every pair of models has a value; None (nothing written) otherwise."""
    try:
        return plot_dendrogram(sub, measure, path, models=models, measure_info=lambda _n: info)
    except ValueError:
        return None
