"""Everything a study writes after its measures: tables, figures, findings.json, manifest, report.md and
report.html; and reading a results folder back to rebuild them without any model."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm


from .._paths import atomic_path, atomic_write_bytes, atomic_write_text, safe_name
from ._common import (
    check_frame,
    controls_relpath,
    dendrogram_relpath,
    file_stems,
    has_controls,
    heatmap_relpath,
    inside,
    measures_of,
    model_order,
    pairs_of,
    probes_relpath,
    summary_relpath,
)
from ._measures import manifest_measure_info, resolve_measure_info
from .analysis import normalize_extra
from .builder import Facts, build_document, findings_record, gather
from .folder import ResultsFolder
from .figures import (
    DPI,
    stamped,
    _colour_scale,
    plot_controls,
    plot_dendrogram,
    plot_layer_heatmap,
    plot_probes,
    plot_summary_heatmap,
)
from .html import render_html
from .markdown import render_markdown
from .tables import summary_cache, summary_table, with_run, write_tables

__all__ = ["write_outputs", "write_manifest", "write_findings", "EXTRA_TABLES"]

#: Show a progress bar for the figure loop from this many figures on.
PROGRESS_MIN_FIGURES = 12

#: The optional prediction-agreement frames and the csv each is written to.
EXTRA_TABLES = {"probes": "probes.csv", "agreement": "agreement.csv", "homogenization": "homogenization.csv"}


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


def _extra_name(key: str) -> str:
    """File name of an extra frame: the known ones by :data:`EXTRA_TABLES`, others ``extra_<key>.csv``."""
    return EXTRA_TABLES.get(key) or f"extra_{safe_name(key, max_len=40)}.csv"


def write_outputs(
    frame: pd.DataFrame, manifest: Mapping[str, Any], out_dir: str | os.PathLike, *,
    extra: Mapping[str, pd.DataFrame] | None = None, measure_info: Callable[[str], Any] | None = None,
    progress: bool = True, dpi: int = DPI, html: bool = True, run_files: Mapping[str, bytes] | None = None,
    record_time: bool = False,
) -> dict[str, list[Path]]:
    """Write every output of a study into ``out_dir``, replacing what was there as a whole.

    - ``similarity.parquet``, ``similarity.csv``: the results frame; ``summary.csv``: one row per
      model pair and measure (see :func:`summary_table`), with the controls at the best and final cells;
    - ``probes.csv``, ``agreement.csv``, ``homogenization.csv``: the prediction-agreement frames of
      ``extra`` where given (another key ``k`` is written as ``extra_<k>.csv``);
    - ``heatmaps/<measure>__<a>__vs__<b>.png``: one layer-by-layer heatmap per pair and measure
      (both directions for an asymmetric measure), one colour scale per measure, relative-depth axes
      where the depths differ, the best-matching path on top;
    - ``summary_<measure>_best.png``, ``summary_<measure>_final.png``: model-by-model matrices, and
      ``dendrogram_<measure>.png`` where there are 3 or more models and every pair has a value;
    - ``controls_<measure>.png`` for each measure with any control (random_init, null_mean, p_value,
      ci_low, ci_high);
      ``probes.png`` where ``extra`` has probes;
    - ``findings.json``: the analysis the report quotes (homogenization index with its definition, the
      finding sentences, per measure the most and least alike pair, mean best value and final range, the
      seed ceiling and H_seed where some recipe has two or more seeds; see
      :func:`~homoscope.report.builder.findings_record`);
    - ``manifest.json`` (indent 2), ``report.md`` and the self-contained ``report.html``: two renderings
      of one document (:func:`~homoscope.report.builder.build_document`), built from the same objects as
      ``findings.json``.

    The folder always holds one run: all is staged beside ``out_dir`` and swapped in under its lock
    (:class:`~homoscope.report.folder.ResultsFolder`); a failure leaves ``out_dir`` as it was. Every file
    carries ``manifest['run']`` where given (a ``run`` column, a PNG text chunk, a line, a json key).

    Model and measure names are sanitized in file names (``homoscope._paths.safe_name``; names that
    would collide get a short hash) and every path is checked to stay inside ``out_dir``. Each file is
    written to a temporary name and moved into place. Figures are drawn on the Agg canvas and cleared
    after saving. Models appear in the order of ``manifest['models']`` where given, else study order.

    Args:
        frame: the tidy results frame: model_a, layer_a, model_b, layer_b, measure, value, n, d_a, d_b,
            unit, and optionally ci_low, ci_high, null_mean, null_std, p_value, random_init.
        manifest: the study manifest (JSON-able dict; see :func:`write_report_md`). A comparison has
            ``manifest['study']['pairs'] == 'first-vs-rest'`` and the new model first in ``models``.
        out_dir: output folder, created if missing.
        extra: optional prediction-agreement frames: ``'probes'`` (model, layer, accuracy or value,
            ci_low, ci_high, n_test or n; optionally best, chance), ``'agreement'`` (model_a, layer_a,
            model_b, layer_b, measure, value, expected_independent, n; optionally ci_low, ci_high,
            selection), ``'homogenization'`` (measure in fleiss_kappa, h_avg, h_unif, h_worst, ...,
            groups, value; optionally selection, k, expected_independent, null_mean, p_value). A frame
            that is None or empty counts as absent; the report then says so in one line.
        measure_info: callable ``name -> dict-like`` describing a measure (kind, value_range,
            symmetric, reference); default: ``manifest['measures'][name]`` where recorded, else
            ``homoscope.measures.get_measure``, else the built-in table.
        progress: show a tqdm bar over the figures when there are many.
        dpi: resolution of every figure.
        html: also write ``report.html``.
        run_files: other files of the run (``{name: bytes}``, e.g. ``study.toml``) written into the same
            folder in the same swap.
        record_time: add the seconds this call took before the reports to ``manifest['timings']`` as
            ``report`` (and to its ``total`` where present), so the reports and ``manifest.json`` quote the
            same timings; ``manifest`` is updated in place.

    Returns:
        ``{'tables': [...], 'heatmaps': [...], 'summaries': [...], 'controls': [...], 'agreement': [...],
        'manifest': [...], 'report': [...]}`` (tables: the data files, findings.json last; report: report.md,
        then report.html).

    Raises:
        ValueError / TypeError: ``frame`` is not a valid results frame, it is empty, or an extra frame
            is malformed (named); ``out_dir`` is in use by another run or holds files homoscope does not
            write (see :meth:`~homoscope.report.folder.ResultsFolder.check`).
        OSError: writing failed (``out_dir`` is then as it was).
    """
    check_frame(frame)
    if frame.empty:
        raise ValueError("frame is empty: there is nothing to report")
    def write(staging: Path, t0: float) -> dict[str, list[Path]]:
        return _write_outputs(frame, manifest, staging, extra, measure_info, progress, dpi, html,
                              t0 if record_time else None)

    return _swapped_in(out_dir, write, run_files)


def _swapped_in(out_dir, write, run_files: Mapping[str, bytes] | None) -> dict[str, list[Path]]:
    """``write(staging, t0)`` into a staging folder, with ``run_files`` beside, swapped in as ``out_dir``
    under its lock; the paths returned are those in ``out_dir``."""
    t0 = time.perf_counter()
    with summary_cache(), ResultsFolder(out_dir) as folder:
        folder.check()
        staging = folder.stage()
        result = write(staging, t0)
        for name, data in (run_files or {}).items():
            atomic_write_bytes(inside(staging / name, staging), data)
        folder.commit()
    out = Path(out_dir)
    return {k: [out / p.relative_to(staging) for p in v] for k, v in result.items()}


def _write_outputs(frame, manifest, out, extra, measure_info, progress, dpi, html, t0) -> dict[str, list[Path]]:
    given = dict(extra or {})
    extra = normalize_extra(given)  # the frames as the report reads them; the files keep them as given
    manifest = manifest if manifest is not None else {}
    run = manifest.get("run") if isinstance(manifest.get("run"), str) else None
    measure_info = measure_info or manifest_measure_info(manifest)
    infos = {m: resolve_measure_info(m, measure_info) for m in measures_of(frame)}
    result: dict[str, list[Path]] = {"tables": _write_data(frame, given, extra, out, infos, run), "heatmaps": [],
                                     "summaries": [], "controls": [], "agreement": [], "manifest": [], "report": []}
    names = [str(m.get("name")) for m in (manifest.get("models") or []) if isinstance(m, Mapping) and m.get("name")]
    order = [m for m in model_order(frame, names) if m in set(model_order(frame))]
    jobs = _figure_jobs(frame, extra, out, order, infos, dpi)
    bar = tqdm(jobs, desc="figures", unit="fig", disable=not (progress and len(jobs) >= PROGRESS_MIN_FIGURES),
               leave=False)
    with stamped(run):
        for key, job in bar:
            path = job()
            if path is not None:
                result[key].append(path)
    if t0 is not None and isinstance(manifest.get("timings"), dict):
        _record_time(manifest["timings"], time.perf_counter() - t0)
    facts = gather(frame, manifest, out, measure_info=lambda n: infos[n], extra=extra)
    result["tables"].append(write_findings(facts, out))
    result["manifest"].append(write_manifest(manifest, out))
    doc = build_document(facts, {k: result[k] for k in ("heatmaps", "summaries", "controls", "agreement")})
    result["report"].append(atomic_write_text(out / "report.md", render_markdown(doc)))
    if html:
        result["report"].append(atomic_write_text(out / "report.html", render_html(doc, out)))
    return result


def _record_time(timings: dict, seconds: float) -> None:
    timings["report"] = seconds
    if isinstance(timings.get("total"), (int, float)):
        timings["total"] = timings["total"] + seconds


def _write_data(frame: pd.DataFrame, given: Mapping[str, pd.DataFrame], extra: Mapping[str, pd.DataFrame], out: Path,
                infos: Mapping[str, Any], run: str | None) -> list[Path]:
    """The results frame, ``summary.csv`` and the extra frames (as given) beside them, each with the run's
    id as its last column ``run`` where there is one; returns their paths."""
    paths = write_tables(frame, out, run=run)
    summary = pd.concat([summary_table(frame, m, measure_info=lambda _n, i=i: i) for m, i in infos.items()],
                        ignore_index=True)
    with atomic_path(out / "summary.csv") as tmp:
        with_run(summary, run).to_csv(tmp, index=False)
    paths.append(out / "summary.csv")
    for key in extra:
        path = inside(out / _extra_name(key), out)
        with atomic_path(path) as tmp:
            with_run(given[key], run).to_csv(tmp, index=False)
        paths.append(path)
    return paths


def _figure_jobs(frame: pd.DataFrame, extra: Mapping[str, pd.DataFrame], out: Path, order: list[str],
                 infos: Mapping[str, Any], dpi: int) -> list[tuple[str, Callable[[], Path | None]]]:
    """One job per figure, with the key of ``write_outputs``' result it belongs to; each gets only its own
    rows so that validation stays cheap."""
    stems = file_stems(sorted(set(order)))
    jobs: list[tuple[str, Callable[[], Path | None]]] = []
    for m, info in infos.items():
        sub = frame[frame["measure"] == m]
        vlim = _colour_scale(info, sub["value"].astype(float).to_numpy())[:2]  # one scale for all pairs
        by_pair = dict(tuple(sub.groupby(["model_a", "model_b"], sort=False)))
        for a, b in pairs_of(sub):
            path = inside(out / heatmap_relpath(m, a, b, stems), out)
            jobs.append(("heatmaps", lambda rows=by_pair[(a, b)], a=a, b=b, m=m, path=path, info=info, vlim=vlim:
                         plot_layer_heatmap(rows, a, b, m, path, measure_info=lambda _n: info, dpi=dpi, vlim=vlim)))
        present = [x for x in order if x in set(model_order(sub))]
        for how in ("best", "final"):
            path = inside(out / summary_relpath(m, how), out)
            jobs.append(("summaries", lambda sub=sub, m=m, path=path, how=how, info=info, present=present:
                         plot_summary_heatmap(sub, m, path, models=present, how=how, measure_info=lambda _n: info,
                                              dpi=dpi)))
        if len(present) >= 3:
            path = inside(out / dendrogram_relpath(m), out)
            jobs.append(("summaries", lambda sub=sub, m=m, path=path, info=info, present=present:
                         _maybe_dendrogram(sub, m, path, present, info, dpi)))
        if has_controls(sub):
            path = inside(out / controls_relpath(m), out)
            jobs.append(("controls", lambda sub=sub, m=m, path=path, info=info, present=present:
                         plot_controls(sub, m, path, models=present, measure_info=lambda _n: info, dpi=dpi)))
    if "probes" in extra:
        path = inside(out / probes_relpath(), out)
        jobs.append(("agreement", lambda path=path: plot_probes(extra["probes"], path, models=order, dpi=dpi)))
    return jobs


def write_findings(facts: Facts, out_dir: str | os.PathLike) -> Path:
    """Write ``findings.json`` (:func:`~homoscope.report.builder.findings_record`: the homogenization index,
    the findings, each measure's summary numbers) atomically, indent 2, missing numbers as null; returns
    its path."""
    text = json.dumps(findings_record(facts), indent=2, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(Path(out_dir) / "findings.json", text + "\n")


def _maybe_dendrogram(sub: pd.DataFrame, measure: str, path: Path, models: list[str], info, dpi: int) -> Path | None:
    """A dendrogram where every pair of models has a value; None (nothing written) otherwise."""
    try:
        return plot_dendrogram(sub, measure, path, models=models, measure_info=lambda _n: info, dpi=dpi)
    except ValueError:
        return None
