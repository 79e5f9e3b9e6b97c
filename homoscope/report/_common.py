"""Shared floor of the report: frame validation, atomic writes, safe file names, model order."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from hashlib import sha1
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from homoscope._paths import safe_name

REQUIRED_COLUMNS = ("model_a", "layer_a", "model_b", "layer_b", "measure", "value")
KEY_COLUMNS = ("model_a", "layer_a", "model_b", "layer_b", "measure")
OPTIONAL_COLUMNS = ("n", "d_a", "d_b", "unit", "ci_low", "ci_high", "null_mean", "null_std", "p_value",
                    "random_init")

#: The largest layer index a results frame may hold (no model has that many layers; a figure of a frame
#: beyond it would take hours to draw).
MAX_LAYER = 9_999

#: Significance level of every "distinguishable from its null" statement in the report.
ALPHA = 0.05


def check_frame(frame: pd.DataFrame, *, name: str = "frame") -> None:
    """Check that ``frame`` is a results frame the report can read.

    Raises:
        TypeError: ``frame`` is not a pandas DataFrame.
        ValueError: a required column is missing, a layer index is negative, not an integer or above
            :data:`MAX_LAYER`, or one (model_a, layer_a, model_b, layer_b, measure) key occurs twice.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lacks columns {missing}; a results frame needs {list(REQUIRED_COLUMNS)} "
            f"(has {list(frame.columns)})"
        )
    for col in ("layer_a", "layer_b"):
        layers = pd.to_numeric(frame[col], errors="coerce")
        bad = frame[col][layers.isna() | (layers < 0) | (layers != layers.round()) | (layers > MAX_LAYER)]
        if len(bad):
            raise ValueError(f"{name}[{col!r}] must hold integer layer indices from 0 to {MAX_LAYER}; got "
                             f"{bad.iloc[0]!r}")
    dup = frame.duplicated(list(KEY_COLUMNS))
    if dup.any():
        row = frame.loc[dup.idxmax(), list(KEY_COLUMNS)].to_dict()
        raise ValueError(f"{name} has more than one row for the key {row}; one row per key is the rule")


def select(frame: pd.DataFrame, measure: str, *, name: str = "frame") -> pd.DataFrame:
    """Rows of ``frame`` for ``measure``; raises ValueError naming the measures present when none match."""
    sub = frame[frame["measure"] == measure]
    if sub.empty:
        raise ValueError(f"{name} has no rows for measure={measure!r}; measures present: {measures_of(frame)}")
    return sub


def measures_of(frame: pd.DataFrame) -> list[str]:
    """Measure names in order of first appearance."""
    return list(dict.fromkeys(frame["measure"].tolist()))


def model_order(frame: pd.DataFrame, models: Sequence[str] | None = None) -> list[str]:
    """Models in study order.

    ``models`` given: that order, followed by any model of the frame it leaves out. Otherwise the order
    of first appearance, reading each row as model_a then model_b (rows put a before b in study order).
    """
    seen: dict[str, None] = {}
    for m in models or ():
        seen.setdefault(str(m), None)
    for a, b in zip(frame["model_a"].tolist(), frame["model_b"].tolist(), strict=True):
        seen.setdefault(str(a), None)
        seen.setdefault(str(b), None)
    return list(seen)


def pairs_of(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """Ordered (model_a, model_b) pairs in order of first appearance."""
    return list(dict.fromkeys(zip(frame["model_a"].astype(str), frame["model_b"].astype(str), strict=True)))


def file_stems(names: Iterable[str]) -> dict[str, str]:
    """Map each name to a file-name fragment that is safe and unique among ``names``.

    Uses :func:`homoscope._paths.safe_name`; names that would collide (``a|b`` and ``a/b``) get a short
    hash of the original name appended, so two models never share a file.
    """
    names = list(dict.fromkeys(str(n) for n in names))
    stems = {n: safe_name(n, max_len=60) for n in names}
    counts: dict[str, int] = {}
    for s in stems.values():
        counts[s] = counts.get(s, 0) + 1
    for n, s in stems.items():
        if counts[s] > 1:
            stems[n] = f"{s}-{sha1(n.encode('utf-8')).hexdigest()[:8]}"
    return stems


def inside(path: Path, root: Path) -> Path:
    """Return ``path`` after checking that it resolves inside ``root``; ValueError otherwise."""
    rp, rr = Path(path).resolve(), Path(root).resolve()
    if rp != rr and rr not in rp.parents:
        raise ValueError(f"path={str(path)!r} would leave the output folder {str(root)!r}")
    return Path(path)


UNIT_PLURAL = {"sentence": "sentences", "word": "words", "token": "tokens"}


def first_value(series: pd.Series):
    """First non-missing value of a series, or None."""
    s = series.dropna()
    return None if s.empty else s.iloc[0]


def num(v: Any) -> float:
    """``v`` as a float; NaN for None, pandas NA, text and anything else that is not a number."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def finite(*values: Any) -> bool:
    """True when every value is a finite number."""
    return all(math.isfinite(num(v)) for v in values)


def bh_adjust(p: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of one family of tests.

    Args:
        p: p-values, any shape; NaN entries are not tests: they stay NaN and do not count in the
            family size.

    Returns:
        float64 array of the shape of ``p``: ``q_(i) = min_{j >= i} m p_(j) / j`` over the sorted
        finite p-values, clipped to at most 1 (Benjamini and Hochberg 1995;
        ``scipy.stats.false_discovery_control``).
    """
    from scipy.stats import false_discovery_control

    arr = np.asarray(p, dtype=float)
    flat = arr.ravel()
    q = np.full(flat.shape, np.nan)
    ok = np.isfinite(flat)
    if ok.any():
        q[ok] = false_discovery_control(flat[ok], method="bh")
    return q.reshape(arr.shape)


def column(rows: pd.DataFrame, col: str) -> np.ndarray:
    """Column ``col`` of ``rows`` as float64 (NaN where missing or where the frame lacks the column)."""
    if col not in rows:
        return np.full(len(rows), np.nan)
    return pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)


CONTROL_COLUMNS = ("random_init", "null_mean", "p_value", "ci_low", "ci_high")


def has_controls(frame: pd.DataFrame, measure: str | None = None) -> bool:
    """True when the frame (the rows of ``measure`` where given) has any control column with a value."""
    sub = frame if measure is None else frame[frame["measure"] == measure]
    return any(c in sub and sub[c].notna().any() for c in CONTROL_COLUMNS)


def rows_used(frame: pd.DataFrame) -> tuple[int | None, str]:
    """The study's rows (the largest ``n`` of the frame) and a note of the measures and controls that used
    fewer (a seeded subsample above ``pairwise_rows``): ``(n, note)``; ``(None, '')`` without an ``n`` column."""
    if "n" not in frame or not frame["n"].notna().any():
        return None, ""
    n = int(frame["n"].max())
    notes = []
    fewer = frame[frame["n"] < n]
    if len(fewer):
        names = ", ".join(sorted(map(str, fewer["measure"].unique())))
        notes.append(f"{int(fewer['n'].min()):,} for {names}")
    if "control_n" in frame and (frame["control_n"] < frame["n"]).any():
        drawn = frame[frame["control_n"] < frame["n"]]
        names = ", ".join(sorted(map(str, drawn["measure"].unique())))
        notes.append(f"the drawn nulls of {names} on {int(drawn['control_n'].min()):,}")
    return n, ("; ".join(notes) + " (a seeded subsample)") if notes else ""


# ------------------------------------------------------------------------------ where each figure is written


#: The folder of the layer heatmaps inside an output folder.
HEATMAP_DIR = "heatmaps"


def heatmap_relpath(measure: str, model_a: str, model_b: str, stems: dict[str, str]) -> str:
    """Relative path of a layer heatmap: ``heatmaps/<measure>__<a>__vs__<b>.png`` (safe names; ``stems``
    from :func:`file_stems`)."""
    return f"{HEATMAP_DIR}/{safe_name(measure, max_len=40)}__{stems[model_a]}__vs__{stems[model_b]}.png"


def summary_relpath(measure: str, how: str) -> str:
    """Relative path of a model-by-model matrix: ``summary_<measure>_<how>.png``."""
    return f"summary_{safe_name(measure, max_len=40)}_{how}.png"


def dendrogram_relpath(measure: str) -> str:
    """Relative path of a dendrogram: ``dendrogram_<measure>.png``."""
    return f"dendrogram_{safe_name(measure, max_len=40)}.png"


def controls_relpath(measure: str) -> str:
    """Relative path of a controls figure: ``controls_<measure>.png``."""
    return f"controls_{safe_name(measure, max_len=40)}.png"


def probes_relpath() -> str:
    """Relative path of the probe-accuracy figure: ``probes.png``."""
    return "probes.png"
