"""Reading a results folder back, checked, and rebuilding its report from its files alone.

A folder is read only where it holds one whole run: ``manifest.json`` is there and well formed, every
table carries the manifest's run id (see :func:`~homoscope.report.outputs.write_outputs`), and the
results hold finite numbers. Anything else is refused with the file named, so a report never quotes two
runs or an edited value as one.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._common import check_frame
from .figures import DPI
from .folder import ResultsFolder
from .outputs import EXTRA_TABLES, write_outputs
from .tables import RUN_COLUMN

__all__ = ["load_results", "rebuild_report", "RUN_FILES"]

#: Files of a run that no report writer makes: a rebuild carries them over unchanged.
RUN_FILES = ("study.toml", "rows.csv")

# text columns of the results frame: a model called "007" or "nan" stays that string
_TEXT_COLUMNS = ("model_a", "model_b", "measure", "unit", "selection", "task", RUN_COLUMN)

# the manifest's top-level entries and the type each must have where present
_MANIFEST_TYPES: dict[str, type | tuple[type, ...]] = {
    "run": str, "study": dict, "corpus": dict, "models": list, "measures": dict, "versions": dict, "device": str,
    "timings": dict, "warnings": list, "commands": list, "created": str, "argv": list, "rows": dict,
    "controls": dict, "agreement": dict,
}

# numeric columns of the results frame that must be finite where present (``value``: everywhere)
_FINITE_COLUMNS = ("value", "ci_low", "ci_high", "null_mean", "null_std", "p_value", "random_init")


def load_results(
    results_dir: str | os.PathLike,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, pd.DataFrame]]:
    """Read a results folder back: the frame, the manifest and the prediction-agreement frames.

    Reads ``similarity.parquet`` (``similarity.csv`` where the parquet is missing or unreadable),
    ``manifest.json`` and ``probes.csv``, ``agreement.csv``, ``homogenization.csv`` where present. Loads no
    model and computes no measure. ``findings.json``, ``summary.csv``, the figures and the reports are
    derived from these and are not read: a rebuild writes them anew. The ``run`` column of each table is
    checked against ``manifest['run']`` and dropped.

    Returns:
        ``(frame, manifest, extra)``.

    Raises:
        ValueError: naming the file: the folder does not exist or holds neither similarity file;
            ``manifest.json`` is missing, not JSON, or an entry has the wrong type; a table belongs to
            another run than the manifest (or carries no run id where the manifest has one); the frame is
            not a results frame, or holds a value that is not finite (NaN, inf) or an infinite control.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise ValueError(f"results_dir={str(root)!r} is not a folder; give the folder a study wrote")
    frame, frame_file = _read_similarity(root)
    manifest = _read_manifest(root / "manifest.json")
    extra = {}
    for key, name in EXTRA_TABLES.items():
        path = root / name
        if path.is_file() and path.stat().st_size > 0:
            try:
                extra[key] = pd.read_csv(path, dtype={RUN_COLUMN: str})
            except pd.errors.EmptyDataError:
                continue
            except (ValueError, pd.errors.ParserError) as err:
                raise ValueError(f"{str(path)!r} is not a readable table: {err}") from None
    run = manifest.get("run")
    frame = _own_run(frame, run, root / frame_file)
    extra = {k: _own_run(t, run, root / EXTRA_TABLES[k]) for k, t in extra.items()}
    check_frame(frame, name=f"{root.name}/{frame_file}")
    _check_finite(frame, root / frame_file)
    _check_ranges(frame, manifest, root / frame_file)
    for k, t in extra.items():
        _check_finite(t, root / EXTRA_TABLES[k], required=())
    return frame, manifest, extra


def _read_similarity(root: Path) -> tuple[pd.DataFrame, str]:
    parquet, csv = root / "similarity.parquet", root / "similarity.csv"
    if parquet.is_file():
        try:
            return pd.read_parquet(parquet), parquet.name
        except (OSError, ValueError, ImportError):
            pass
    if not csv.is_file():
        raise ValueError(f"{str(root)!r} holds neither similarity.parquet nor similarity.csv; is it a results "
                         "folder?")
    try:
        return _read_frame_csv(csv), csv.name
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{str(csv)!r} is not a readable table: {err}") from None


def _read_frame_csv(path: Path) -> pd.DataFrame:
    """``similarity.csv`` with its text columns read as text (no number or missing-value parsing)."""
    head = pd.read_csv(path, nrows=0).columns
    text = [c for c in _TEXT_COLUMNS if c in head]
    na = {c: ["", "NaN", "nan", "NA"] for c in head if c not in text}
    return pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=False, na_values=na)


def _read_manifest(path: Path) -> dict[str, Any]:
    """``manifest.json``, required, a JSON object whose known entries have their types."""
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is missing: a results folder holds the manifest of its run; rebuild "
                         "only a folder a study wrote whole (rerun the study to recreate it)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(manifest).__name__}")
    for key, kind in _MANIFEST_TYPES.items():
        if key in manifest and manifest[key] is not None and not isinstance(manifest[key], kind):
            raise ValueError(f"{str(path)!r}: {key!r} must be a JSON {_json_kind(kind)}, got "
                             f"{_json_kind(type(manifest[key]))}; the file was edited or written by another program")
    for i, model in enumerate(manifest.get("models") or []):
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            raise ValueError(f"{str(path)!r}: models[{i}] must be an object with a text 'name'")
        if not isinstance(model.get("outliers", []), list) or not all(
                isinstance(r, dict) for r in model.get("outliers", [])):
            raise ValueError(f"{str(path)!r}: models[{i}].outliers must be a list of objects")
    study = manifest.get("study") or {}
    if not isinstance(study.get("measures", []), list):
        raise ValueError(f"{str(path)!r}: study.measures must be a list of measure names")
    return manifest


def _json_kind(kind) -> str:
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
             type(None): "null"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _own_run(table: pd.DataFrame, run: str | None, path: Path) -> pd.DataFrame:
    """``table`` without its ``run`` column, after checking it holds only ``run``."""
    ids = set(table[RUN_COLUMN].astype(str)) if RUN_COLUMN in table else set()
    if run is None and not ids:
        return table  # written without a run id (by hand, or before run ids): nothing to compare
    if ids != {run}:
        found = ", ".join(sorted(ids)) or "no run id"
        raise ValueError(f"{str(path)!r} belongs to run {found}, but manifest.json to run {run or '(none)'}: the "
                         "folder mixes files of different runs; rerun the study into it (or another --out)")
    return table.drop(columns=[RUN_COLUMN])


def _check_finite(table: pd.DataFrame, path: Path, required: tuple[str, ...] = ("value",)) -> None:
    """Refuse values that are not numbers: NaN or inf in ``required`` columns, inf anywhere."""
    for col in table.columns:
        if col in _TEXT_COLUMNS:
            continue
        values = pd.to_numeric(table[col], errors="coerce") if col in _FINITE_COLUMNS else table[col]
        if not pd.api.types.is_numeric_dtype(values):
            continue
        arr = values.to_numpy(dtype=float, na_value=np.nan)
        bad = ~np.isfinite(arr) if col in required else np.isinf(arr)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"{str(path)!r}, row {row + 2} (line in the file), column {col!r}: "
                             f"{_show(arr[row])} is not a finite number; a study writes finite results, so the file "
                             "was edited or damaged: rerun the study")


def _check_ranges(frame: pd.DataFrame, manifest: dict, path: Path) -> None:
    """Refuse values no study writes: a row count ``n`` below 1, a value outside its measure's declared range
    (``manifest['measures'][m]['value_range']``, where recorded)."""
    if "n" in frame:
        n = pd.to_numeric(frame["n"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        bad = ~(n >= 1) | (n != np.round(n))
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"{str(path)!r}, row {row + 2} (line in the file), column 'n': {frame['n'].iloc[row]} is "
                             "not a row count (an integer >= 1); the file was edited or damaged: rerun the study")
    for m, info in (manifest.get("measures") or {}).items():
        span = info.get("value_range") if isinstance(info, dict) else None
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(x, (int, float)) for x in span)):
            continue
        v = frame.loc[frame["measure"] == m, "value"].astype(float)
        tol = 1e-9 * max(1.0, *(abs(x) for x in span if math.isfinite(x)))
        out = v[(v < span[0] - tol) | (v > span[1] + tol)]
        if len(out):
            raise ValueError(f"{str(path)!r}, row {int(out.index[0]) + 2} (line in the file): {m} = {float(out.iloc[0])!r} lies "
                             f"outside its range [{span[0]:g}, {span[1]:g}]; the file was edited or damaged: rerun the study")


def _show(x: float) -> str:
    return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _carried(source: Path, run: str | None) -> dict[str, bytes]:
    """The :data:`RUN_FILES` of a results folder, each checked to belong to the manifest's run (``study.toml``
    by its first line, ``rows.csv`` by its ``run`` column)."""
    carried = {name: (source / name).read_bytes() for name in RUN_FILES if (source / name).is_file()}
    if "study.toml" in carried:
        first = carried["study.toml"].split(b"\n", 1)[0].decode("utf-8", "replace")
        found = first[len("# homoscope run "):].strip() if first.startswith("# homoscope run ") else None
        if (found or run) and found != run:
            raise ValueError(f"{str(source / 'study.toml')!r} belongs to run {found or '(none)'}, but manifest.json "
                             f"to run {run or '(none)'}: the folder mixes files of different runs; rerun the study "
                             "into it (or another --out)")
    if "rows.csv" in carried:
        try:
            rows = pd.read_csv(source / "rows.csv", dtype={RUN_COLUMN: str}, nrows=None)
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise ValueError(f"{str(source / 'rows.csv')!r} is not a readable table: {err}") from None
        _own_run(rows, run, source / "rows.csv")
    return carried


def rebuild_report(
    results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, progress: bool = True,
    dpi: int = DPI,
) -> dict[str, list[Path]]:
    """Rebuild every table, figure, ``findings.json``, ``report.md`` and ``report.html`` of a results
    folder from its files alone, without a model.

    Reads the folder with :func:`load_results` and writes with :func:`write_outputs` into ``out_dir``
    (default: the results folder itself, under its lock, swapped in whole; the frame, manifest, extra tables
    and :data:`RUN_FILES` are written back unchanged), so that the rebuilt ``report.md`` is the one the study
    wrote, byte for byte.

    Returns:
        As :func:`write_outputs`.

    Raises:
        ValueError: as :func:`load_results` and :func:`write_outputs`; a manifest whose entries the report
            cannot read (named).
    """
    source = Path(results_dir)
    if not source.is_dir():
        raise ValueError(f"the results folder {str(source)!r} is not a folder; give the folder a study wrote")
    out = Path(out_dir) if out_dir is not None else source
    with ResultsFolder(out, option="out" if out_dir is not None else "results") as folder:
        folder.check()
        frame, manifest, extra = load_results(source)
        carried = _carried(source, manifest.get("run"))
        try:
            return write_outputs(frame, manifest, out, extra=extra, progress=progress, dpi=dpi, run_files=carried)
        except (TypeError, AttributeError, KeyError) as err:  # a manifest entry of an unexpected shape
            raise ValueError(f"{str(source / 'manifest.json')!r} holds an entry the report cannot read "
                             f"({type(err).__name__}: {err}); the file was edited or written by another "
                             "version: rerun the study") from None
