"""Figures derived from the results frame: layer heatmaps, model-by-model matrices, dendrograms.

All figures use matplotlib's object API on the Agg canvas (no display, no pyplot state), a
perceptually uniform colormap (viridis; reversed for distances so that bright always means more
alike) and a colour scale fixed to the measure's range, so figures of one measure compare at a glance.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from .._paths import atomic_path
from ._common import ALPHA, UNIT_PLURAL, bh_adjust, check_frame, column, first_value, num, select
from ._measures import MeasureInfo, resolve_measure_info
from .tables import layer_matrix, pair_rows, summary_matrix

__all__ = ["plot_layer_heatmap", "plot_summary_heatmap", "plot_dendrogram", "plot_controls", "plot_probes", "DPI"]

#: Default resolution of every figure.
DPI = 150

_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 10,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "text.usetex": False,
    "axes.unicode_minus": True,
}

_HOW_TITLE = {"best": "best layer pair", "final": "final layer vs final layer"}


def _txt(s: Any, width: int | None = None) -> str:
    """Model names are data: keep matplotlib from reading ``$...$`` as math, shorten very long names."""
    s = " ".join(str(s).split())
    if width is not None and len(s) > width:
        s = s[: width - 1] + "\u2026"
    return s.replace("$", r"\$")


def _wrap(s: Any, width: int) -> str:
    return "\n".join(_txt(line) for line in textwrap.wrap(" ".join(str(s).split()), width) or [""])


def _fmt(v: float, digits: int = 3) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}".replace("-", "\u2212")


def _colour_scale(
    info: MeasureInfo, values: np.ndarray, vlim: tuple[float, float] | None = None,
) -> tuple[float, float, str]:
    """(vmin, vmax, colourbar extend) from ``vlim`` or the measure's range; infinite bounds fall back
    to the data."""
    lo, hi = vlim if vlim is not None else info.colour_range
    finite = values[np.isfinite(values)]
    if not math.isfinite(lo):
        lo = float(finite.min()) if finite.size else 0.0
    if not math.isfinite(hi):
        hi = float(finite.max()) if finite.size else 1.0
    if hi <= lo:
        hi = lo + 1.0
    below = bool(finite.size and finite.min() < lo - 1e-12)
    above = bool(finite.size and finite.max() > hi + 1e-12)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}
    return lo, hi, extend[(below, above)]


def _cmap(info: MeasureInfo):
    return matplotlib.colormaps["viridis" if info.higher_is_more_alike else "viridis_r"].with_extremes(bad="#d9d9d9")


def _new_figure(figsize: tuple[float, float], dpi: int, layout: str | None = None) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("homoscope_run", default=None)


@contextlib.contextmanager
def stamped(run: str | None):
    """Within the block, every figure saved carries ``run`` (a run's id) in the PNG text chunk
    :data:`PNG_RUN_KEY`."""
    token = _RUN.set(run)
    try:
        yield
    finally:
        _RUN.reset(token)


#: The PNG text key that holds the id of the run a figure belongs to.
PNG_RUN_KEY = "homoscope run"


def _save(fig: Figure, path: str | os.PathLike, dpi: int, *, tight: bool = True) -> Path:
    """Save as PNG atomically and clear the figure. ``tight=False`` skips the bounding-box pass
    (one draw instead of two) where constrained layout already keeps everything inside."""
    path = Path(path)
    run = _RUN.get()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, facecolor="white",
                        metadata={PNG_RUN_KEY: run} if run else None,
                        **({"bbox_inches": "tight", "pad_inches": 0.06} if tight else {}))
    finally:
        fig.clear()
    return path


def _ticks(n: int, max_labels: int = 12) -> list[int]:
    """Layer ticks 0..n-1: every layer when few, else a round step."""
    for step in (1, 2, 4, 5, 8, 10, 16, 20, 25, 50, 100):
        if math.ceil(n / step) <= max_labels:
            return list(range(0, n, step))
    return list(range(0, n, max(1, n // max_labels)))


def _text_colour(rgba) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _series_int(rows: pd.DataFrame, col: str):
    if col not in rows:
        return None
    v = first_value(rows[col])
    return None if v is None else int(v)


def plot_layer_heatmap(
    frame: pd.DataFrame, model_a: str, model_b: str, measure: str, path: str | os.PathLike, *,
    measure_info: Callable[[str], Any] | None = None, dpi: int = DPI,
    vlim: tuple[float, float] | None = None, relative: bool | None = None, alpha: float = ALPHA,
) -> Path:
    """Draw one measure for one pair of models over all layer pairs and save it as a PNG.

    Rows (y) are ``model_a``'s layers, columns (x) ``model_b``'s, layer 0 (embeddings) at the origin.
    Where the two models have different numbers of layers the axes are relative depth (layer / last
    layer, 0 = embeddings, 1 = last layer), so that the dashed diagonal is equal relative depth; minor
    ticks mark every layer. The colour scale is the measure's range (``vlim`` overrides it: pass one
    scale for all pairs of an unbounded measure); the colourbar names the measure. The best-matching
    path is drawn on top: for each row the best column (max for a similarity, min for a distance),
    joined by a line; a star marks the best layer pair overall. Where the frame has permutation
    p-values, cells whose Benjamini-Hochberg adjusted p (over this pair's layer pairs) is >= ``alpha``
    are hatched: not distinguishable from the null. A caption gives n, d_a and d_b, the best and final
    values, and the bootstrap interval, permutation null and random-init control where present.

    Args:
        frame: the tidy results frame (only rows of this pair and measure are read).
        model_a, model_b: the pair; for a symmetric measure stored as (b, a) the matrix is transposed.
        measure: measure name in the ``measure`` column.
        path: PNG file to write (atomically); its folder is created.
        measure_info: callable ``name -> dict-like`` describing the measure (kind, value_range,
            symmetric, reference); default: the measure registry or the built-in table.
        dpi: resolution.
        vlim: ``(vmin, vmax)`` of the colour scale; default the measure's (display) range, falling back
            to this pair's values where the range is unbounded.
        relative: axes in relative depth (True), in layer indices (False), or relative exactly when the
            layer counts differ (None, default).
        alpha: significance level of the hatching.

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: the frame is invalid or has no rows for this pair and measure.
    """
    check_frame(frame)
    info = resolve_measure_info(measure, measure_info)
    rows, transposed = pair_rows(frame, model_a, model_b, measure, info)
    mat = layer_matrix(rows, model_a, model_b, measure, measure_info=lambda _n: info).to_numpy()
    n_a, n_b = mat.shape
    rel = (n_a != n_b) if relative is None else bool(relative)
    grid = _layer_grid(rows, mat, transposed, info, alpha, rel)
    lines = _layer_caption(rows, mat, grid.star, transposed, *_pair_sizes(rows, transposed), grid.qmat, alpha)
    title = (f"{_txt(model_a)}  vs  {_txt(model_b)}" if len(str(model_a)) + len(str(model_b)) < 56
             else f"{_wrap(model_a, 64)}\nvs  {_wrap(model_b, 64)}")
    sub = f"{_txt(measure)}  ({info.kind}, {'higher' if info.higher_is_more_alike else 'lower'} = more alike)"
    if not info.symmetric:
        sub += "\nasymmetric: measured from row model to column model"

    width, height, ax_box, cax_box, legend_y = _layer_geometry(n_a, n_b, title, sub, len(lines),
                                                                bool(grid.ns_cells.any()))
    fig = _new_figure((width, height), dpi, layout=None)
    with matplotlib.rc_context(_RC):
        ax, cax = fig.add_axes(ax_box), fig.add_axes(cax_box)
        lo, hi, extend = _colour_scale(info, mat, vlim)
        im = _draw_layer_cells(ax, grid, info, Normalize(lo, hi))
        _draw_best_path(ax, grid)
        _layer_axes(ax, rel, model_a, model_b, n_a, n_b)
        fig.text(0.5, 1 - 0.12 / height, title, ha="center", va="top", fontsize=10, fontweight="bold")
        ax.set_title(sub, fontsize=8.5, color="0.25")
        cb = fig.colorbar(im, cax=cax, extend=extend)
        cb.set_label(_txt(measure))
        cb.outline.set_linewidth(0.5)
        _layer_legend(fig, grid.ns_cells.any(), alpha, legend_y)
        fig.text(0.5, 0.08 / height, "\n".join(lines), ha="center", va="bottom", fontsize=7.5, color="0.2",
                 linespacing=1.5)
        return _save(fig, path, dpi, tight=False)


def _layer_geometry(n_a: int, n_b: int, title: str, sub: str, n_lines: int, hatched: bool):
    """Figure size and boxes of a layer heatmap, laid out by hand in inches (fast, and the same for every
    pair): cells roughly square within a paper-friendly box; below the axes the tick labels, axis label,
    legend and caption. Returns ``(width, height, axes box, colourbar box, legend top)``, boxes and legend
    top as fractions of the figure."""
    width, left, right = 5.2, 0.95, 1.0
    ax_h = 3.5 * min(max(n_a / n_b, 0.6), 1.25)
    top = 0.16 + 0.19 * (title.count("\n") + 1) + 0.16 * (sub.count("\n") + 1) + 0.06
    cap_h = 0.1 + 0.165 * n_lines
    legend_h, xlab_h = 0.3 + (0.18 if hatched else 0.0), 0.62
    bottom = cap_h + legend_h + xlab_h
    height = top + ax_h + bottom
    ax_box = (left / width, bottom / height, (width - left - right) / width, ax_h / height)
    cax_box = ((width - right + 0.14) / width, bottom / height, 0.14 / width, ax_h / height)
    return width, height, ax_box, cax_box, (cap_h + legend_h) / height


@dataclass
class _LayerGrid:
    """One pair's layer-by-layer matrix and what is drawn on it: the hatched cells (BH q at least alpha),
    each row's best column, the best cell overall, and the size of a cell in axis units."""

    mat: np.ndarray
    qmat: np.ndarray
    ns_cells: np.ndarray
    rows_ok: list[int]
    best_cols: list[int]
    star: tuple[int, int] | None
    sx: float
    sy: float


def _layer_grid(rows: pd.DataFrame, mat: np.ndarray, transposed: bool, info: MeasureInfo, alpha: float,
                rel: bool) -> _LayerGrid:
    n_a, n_b = mat.shape
    better = np.nanargmax if info.higher_is_more_alike else np.nanargmin
    qmat = bh_adjust(_cell_matrix(rows, "p_value", mat.shape, transposed))
    rows_ok = [i for i in range(n_a) if np.isfinite(mat[i]).any()]
    return _LayerGrid(mat, qmat, np.isfinite(qmat) & (qmat >= alpha), rows_ok, [int(better(mat[i])) for i in rows_ok],
                      divmod(int(better(mat)), n_b) if rows_ok else None,
                      1.0 / max(n_b - 1, 1) if rel else 1.0, 1.0 / max(n_a - 1, 1) if rel else 1.0)


def _pair_sizes(rows: pd.DataFrame, transposed: bool) -> tuple[int | None, str | None, int | None, int | None]:
    """``(n, unit, d_a, d_b)`` of one pair's rows, widths in the order the figure shows the models."""
    d_a, d_b = _series_int(rows, "d_a"), _series_int(rows, "d_b")
    if transposed:
        d_a, d_b = d_b, d_a
    n = int(rows["n"].min()) if "n" in rows and rows["n"].notna().any() else None
    unit = str(first_value(rows["unit"])) if "unit" in rows and first_value(rows["unit"]) is not None else None
    return n, unit, d_a, d_b


def _draw_layer_cells(ax, grid: _LayerGrid, info: MeasureInfo, norm: Normalize):
    """The coloured cells, the hatching of cells not above their null and, for a small grid, the values."""
    mat, ns_cells, sx, sy = grid.mat, grid.ns_cells, grid.sx, grid.sy
    n_a, n_b = mat.shape
    extent = (-sx / 2, (n_b - 1) * sx + sx / 2, -sy / 2, (n_a - 1) * sy + sy / 2)
    im = ax.imshow(np.ma.masked_invalid(mat), origin="lower", cmap=_cmap(info), norm=norm, aspect="auto",
                   interpolation="nearest", extent=extent)
    if ns_cells.any():
        rects = [Rectangle((j * sx - sx / 2, i * sy - sy / 2), sx, sy) for i, j in np.argwhere(ns_cells)]
        ax.add_collection(PatchCollection(rects, facecolor=(1, 1, 1, 0.55), edgecolor="0.3", hatch="////",
                                          linewidth=0, zorder=1.5))
    if n_a <= 10 and n_b <= 10:  # few cells: print the values too (below the markers)
        cmap = im.get_cmap()
        for i in range(n_a):
            for j in range(n_b):
                if np.isfinite(mat[i, j]):
                    colour = "0.15" if ns_cells[i, j] else _text_colour(cmap(norm(mat[i, j])))
                    ax.text(j * sx, (i - 0.3) * sy, _fmt(mat[i, j], 2), ha="center", va="center",
                            fontsize=6.5, color=colour, zorder=5)
    return im


def _draw_best_path(ax, grid: _LayerGrid) -> None:
    """The diagonal of equal relative depth, each row's best column joined by a line, the best cell's star."""
    (n_a, n_b), sx, sy, star = grid.mat.shape, grid.sx, grid.sy, grid.star
    extent = (-sx / 2, (n_b - 1) * sx + sx / 2, -sy / 2, (n_a - 1) * sy + sy / 2)
    # equal relative depth: layer_a / (n_a - 1) == layer_b / (n_b - 1)
    ax.plot([0, (n_b - 1) * sx], [0, (n_a - 1) * sy], color="white", lw=1.1, ls=(0, (5, 3)), alpha=0.95, zorder=2)
    size = float(np.clip(900.0 / max(n_a, n_b), 6, 36))
    if len(grid.rows_ok) > 1:  # the best-matching path: each row's best column, joined
        ax.plot([j * sx for j in grid.best_cols], [i * sy for i in grid.rows_ok], color="white", lw=1.3, zorder=3,
                path_effects=[patheffects.Stroke(linewidth=2.6, foreground="black"), patheffects.Normal()])
    dots = [(j, i) for i, j in zip(grid.rows_ok, grid.best_cols, strict=True) if (i, j) != star]
    if dots:
        xs, ys = zip(*dots, strict=True)
        ax.scatter([x * sx for x in xs], [y * sy for y in ys], s=size, c="white", edgecolors="black",
                   linewidths=0.6, zorder=4)
    if star is not None:
        ax.scatter([star[1] * sx], [star[0] * sy], s=size * 4.0, marker="*", c="white", edgecolors="black",
                   linewidths=0.6, zorder=4.5)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])


def _layer_axes(ax, rel: bool, model_a: str, model_b: str, n_a: int, n_b: int) -> None:
    """Ticks and labels: relative depth, or layer indices, with a minor tick at every layer."""
    if rel:
        for axis, count in ((ax.xaxis, n_b), (ax.yaxis, n_a)):
            axis.set_ticks([0, 0.25, 0.5, 0.75, 1.0], ["0", ".25", ".5", ".75", "1"])
            axis.set_ticks([k / max(count - 1, 1) for k in range(count)], minor=True)
        ax.set_xlabel(f"{_txt(model_b, 56)}\nrelative depth (layer / {n_b - 1})")
        ax.set_ylabel(f"{_txt(model_a, 40)}\nrelative depth (layer / {n_a - 1})")
    else:
        ax.set_xticks(_ticks(n_b))
        ax.set_yticks(_ticks(n_a))
        ax.set_xticks(range(n_b), minor=True)
        ax.set_yticks(range(n_a), minor=True)
        ax.set_xlabel(f"{_txt(model_b, 56)}\nlayer (0 = embeddings)")
        ax.set_ylabel(f"{_txt(model_a, 40)}\nlayer (0 = embeddings)")
    ax.tick_params(which="minor", length=2)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _layer_legend(fig: Figure, hatched: bool, alpha: float, y: float) -> None:
    handles = [
        Line2D([], [], color="white", lw=1.3, marker="o", mfc="white", mec="black", mew=0.6, ms=5,
               path_effects=[patheffects.Stroke(linewidth=2.6, foreground="black"), patheffects.Normal()],
               label="best match per row"),
        Line2D([], [], ls="none", marker="*", mfc="white", mec="black", mew=0.6, ms=9, label="best overall"),
        Line2D([], [], color="0.35", lw=1.1, ls=(0, (5, 3)), label="equal relative depth"),
    ]
    if hatched:
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="////", lw=0,
                             label=f"n.s.: not above null (BH q \u2265 {alpha:g})"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, y), ncols=2 if len(handles) > 3 else 3,
               frameon=False, handletextpad=0.4, columnspacing=1.4, borderaxespad=0.0)


def _cell_matrix(rows: pd.DataFrame, col: str, shape: tuple[int, int], transposed: bool) -> np.ndarray:
    """Column ``col`` of one pair's rows as a [layers of a, layers of b] matrix (NaN where missing)."""
    m = np.full(shape, np.nan)
    if col not in rows:
        return m
    la, lb = ("layer_b", "layer_a") if transposed else ("layer_a", "layer_b")
    m[rows[la].astype(int).to_numpy(), rows[lb].astype(int).to_numpy()] = column(rows, col)
    return m


def _layer_caption(rows, mat, star, transposed, n, unit, d_a, d_b, qmat=None, alpha=ALPHA) -> list[str]:
    """Caption lines under a layer heatmap: n and d, the best and final values, CI, controls, p-values."""
    n_a, n_b = mat.shape
    parts = []
    if n is not None:
        parts.append(f"n = {n:,} {UNIT_PLURAL.get(unit, unit or 'rows')}")
    elif unit:
        parts.append(f"unit: {unit}")
    if d_a is not None or d_b is not None:
        parts.append(f"d_a = {d_a if d_a is not None else '?'}, d_b = {d_b if d_b is not None else '?'}")
    parts.append(f"{n_a} \u00d7 {n_b} layers")
    lines = ["   \u00b7   ".join(parts)]
    if star is not None:
        i, j = star
        best_line = f"best {_fmt(mat[i, j])} at layers ({i}, {j})"
        brow = _row_at(rows, i, j, transposed)
        controls = []
        if brow is not None:
            lo_ci, hi_ci = num(brow.get("ci_low")), num(brow.get("ci_high"))
            if np.isfinite(lo_ci) and np.isfinite(hi_ci):
                best_line += f", 95% CI [{_fmt(lo_ci)}, {_fmt(hi_ci)}]"
            ri = num(brow.get("random_init"))
            if np.isfinite(ri):
                controls.append(f"random-init {_fmt(ri)}")
            nm, ns = num(brow.get("null_mean")), num(brow.get("null_std"))
            if np.isfinite(nm):
                controls.append(f"null {_fmt(nm)}" + (f" \u00b1 {_fmt(ns)}" if np.isfinite(ns) else ""))
        best_line += f"   \u00b7   final {_fmt(mat[n_a - 1, n_b - 1])}"
        lines.append(best_line)
        if controls:
            lines.append("at the best pair: " + ", ".join(controls))
    if "p_value" in rows and rows["p_value"].notna().any():
        q = qmat[np.isfinite(qmat)] if qmat is not None else np.array([])
        lines.append(f"above the permutation null in {int((q < alpha).sum())} of {q.size} layer pairs "
                     f"(Benjamini-Hochberg q < {alpha:g})")
    if np.isnan(mat).any():
        lines.append("grey: layer pair not measured")
    return lines


def _row_at(rows: pd.DataFrame, i: int, j: int, transposed: bool) -> pd.Series | None:
    la, lb = (j, i) if transposed else (i, j)
    hit = rows[(rows["layer_a"].astype(int) == la) & (rows["layer_b"].astype(int) == lb)]
    return None if hit.empty else hit.iloc[0]


def plot_summary_heatmap(
    frame: pd.DataFrame, measure: str, path: str | os.PathLike, *, models: Sequence[str] | None = None,
    how: str = "best", measure_info: Callable[[str], Any] | None = None, dpi: int = DPI, alpha: float = ALPHA,
) -> Path:
    """Draw the model-by-model matrix of one measure and save it as a PNG.

    ``how='best'``: each cell is the best value over all layer pairs (max for a similarity, min for a
    distance); ``how='final'``: last layer vs last layer. The diagonal is the identity (1 for a
    similarity, 0 for a distance), drawn hatched. Cells are annotated with their values; the colour
    scale is fixed to the measure's range. Models appear in the order given (default: study order).
    For an asymmetric measure a cell reads "row model to column model". Where the frame has permutation
    p-values, a cell whose value is not distinguishable from its null (Benjamini-Hochberg q >= ``alpha``
    over that pair's layer pairs, at the cell's layer pair) is hatched, greyed and marked "n.s."; a
    pair that was not measured (e.g. two references in a comparison) reads "not measured".

    Args:
        frame: the tidy results frame.
        measure: measure name.
        path: PNG file to write (atomically).
        models: model names in display order; default: all models of the frame in study order.
        how: 'best' or 'final'.
        measure_info: callable ``name -> dict-like`` describing the measure.
        dpi: resolution.

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: ``how`` not 'best'/'final', invalid frame, or no rows for ``measure``.
    """
    info = resolve_measure_info(measure, measure_info)
    mat_df = summary_matrix(frame, measure, models=models, how=how, measure_info=lambda _n: info)
    names = list(mat_df.index)
    mat = mat_df.to_numpy(dtype=float)
    qm = summary_matrix(frame, measure, models=models, how=how, measure_info=lambda _n: info,
                        field=f"{how}_q_value").to_numpy(dtype=float)
    ns_cells = np.isfinite(qm) & (qm >= alpha)
    k = len(names)
    off = mat[~np.eye(k, dtype=bool)] if k > 1 else np.array([])
    lo, hi, extend = _colour_scale(info, off)
    cmap, norm = _cmap(info), Normalize(lo, hi)

    n, unit, _, _ = _pair_sizes(select(frame, measure), False)
    labels = [_txt(m, 30) for m in names]
    # the note keeps to the width of the matrix (7.5 pt characters are about 0.55 of their size wide)
    note = _matrix_note(info, how, n, unit, bool(ns_cells.any()), alpha,
                        max(28, int(_matrix_side(len(labels)) * 72 / (7.5 * 0.55))))
    width, height, ax_box, cax_box = _matrix_geometry(labels, info.symmetric, note.count("\n"))
    fig = _new_figure((width, height), dpi)
    with matplotlib.rc_context(_RC):
        ax, cax = fig.add_axes(ax_box), fig.add_axes(cax_box)
        shown = mat.copy()
        np.fill_diagonal(shown, np.nan)
        shown[ns_cells] = np.nan  # never coloured as similarity
        im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, norm=norm, aspect="equal", interpolation="nearest")
        _annotate_matrix(ax, mat, ns_cells, cmap, norm)
        _matrix_axes(ax, labels, info)
        fig.text(ax_box[0] + ax_box[2] / 2, 1 - 0.08 / height, f"{_txt(measure)}: {_HOW_TITLE[how]}",
                 ha="center", va="top", fontweight="bold", fontsize=10)
        cb = fig.colorbar(im, cax=cax, extend=extend)
        cb.set_label(f"{_txt(measure)} ({'higher' if info.higher_is_more_alike else 'lower'} = more alike)")
        cb.outline.set_linewidth(0.5)
        ax.set_title(note, fontsize=7.5, color="0.25", pad=5)
        return _save(fig, path, dpi)


def _matrix_side(k: int) -> float:
    """The side of a k x k model matrix in inches."""
    return float(np.clip(0.95 - 0.045 * k, 0.42, 0.8)) * k


def _matrix_geometry(labels: list[str], symmetric: bool, extra_lines: int):
    """Figure size and boxes of a model-by-model matrix in inches, generous (the saved figure is trimmed to
    its content; ``extra_lines``: lines of the note beyond its first). Returns ``(width, height, axes box,
    colourbar box)``, boxes as fractions of the figure."""
    k = len(labels)
    side = _matrix_side(k)
    label_w = 0.3 + 0.068 * max((len(x) for x in labels), default=4)
    left, bottom = label_w + (0.3 if not symmetric else 0.0), 0.6 * label_w + 0.55
    width, height = left + side + 1.35, bottom + side + 0.56 + 0.17 * extra_lines
    return (width, height, (left / width, bottom / height, side / width, side / height),
            ((left + side + 0.18) / width, bottom / height + 0.05 * side / height, 0.14 / width, 0.9 * side / height))


def _annotate_matrix(ax, mat: np.ndarray, ns_cells: np.ndarray, cmap, norm: Normalize) -> None:
    """Each cell's value: the identity on the hatched diagonal, n.s. cells hatched and greyed, a pair not
    measured said so."""
    k = len(mat)
    digits = 3 if k <= 6 else 2
    fs = float(np.clip(10.5 - 0.45 * k, 5.5, 9))
    for i in range(k):
        for j in range(k):
            v = mat[i, j]
            if i == j:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#f2f2f2", edgecolor="#bdbdbd",
                                       hatch="////", lw=0))
                ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=fs, color="0.35", style="italic")
            elif np.isfinite(v) and ns_cells[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#f7f7f7", edgecolor="#9e9e9e",
                                       hatch="////", lw=0))
                ax.text(j, i, f"{_fmt(v, digits)}\nn.s.", ha="center", va="center", fontsize=fs * 0.9, color="0.3",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
            elif np.isfinite(v):
                ax.text(j, i, _fmt(v, digits), ha="center", va="center", fontsize=fs,
                        color=_text_colour(cmap(norm(v))))
            else:
                ax.text(j, i, "not\nmeasured", ha="center", va="center", fontsize=fs * 0.7, color="0.4")


def _matrix_axes(ax, labels: list[str], info: MeasureInfo) -> None:
    """Model names on both axes, white lines between the cells, direction labels for an asymmetric measure."""
    k = len(labels)
    ax.set_xticks(range(k), labels, rotation=35, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xticks(np.arange(-0.5, k, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, k, 1), minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)
    if not info.symmetric:
        ax.set_ylabel("from (row model)")
        ax.set_xlabel("to (column model)")


def _matrix_note(info: MeasureInfo, how: str, n: int | None, unit: str | None, hatched: bool, alpha: float,
                 max_chars: int = 200) -> str:
    """The lines above a model-by-model matrix: n, what a cell is, the diagonal (joined on one line where
    ``max_chars`` allows, else broken between them), and n.s. where used."""
    how_txt = ("cell = " + ("max" if info.higher_is_more_alike else "min") + " over all layer pairs"
               if how == "best" else "cell = last layer vs last layer")
    parts = [how_txt, f"diagonal = identity ({info.identity:g})"]
    if n is not None:
        parts.insert(0, f"n = {n:,} {UNIT_PLURAL.get(unit, unit or 'rows')}")
    lines = [parts[0]]
    for part in parts[1:]:
        joined = f"{lines[-1]}   \u00b7   {part}"
        lines[-1:] = [joined] if len(joined) <= max_chars else [lines[-1], part]
    note = "\n".join(lines)
    if hatched:
        note += f"\nn.s. = not distinguishable from its permutation null (BH q \u2265 {alpha:g})"
    return note


def plot_dendrogram(
    frame: pd.DataFrame, measure: str, path: str | os.PathLike, *, models: Sequence[str] | None = None,
    how: str = "best", measure_info: Callable[[str], Any] | None = None, dpi: int = DPI,
) -> Path:
    """Cluster the models by one measure (average linkage) and save the dendrogram as a PNG.

    Dissimilarity between two models: identity - value for a similarity (e.g. 1 - CKA), the value
    itself for a distance, taken from :func:`summary_matrix` (``how`` = 'best' or 'final') and averaged
    over both directions for an asymmetric measure. Clustering is ``scipy.cluster.hierarchy.linkage``
    with ``method='average'`` (UPGMA).

    Raises:
        ValueError: fewer than 2 models, or a pair of models without a value.
    """
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    info = resolve_measure_info(measure, measure_info)
    mat_df = summary_matrix(frame, measure, models=models, how=how, measure_info=lambda _n: info)
    names = list(mat_df.index)
    k = len(names)
    if k < 2:
        raise ValueError(f"a dendrogram needs at least 2 models; frame has {k} for measure={measure!r}")
    m = mat_df.to_numpy(dtype=float)
    dis = (info.identity - m) if info.higher_is_more_alike else m.copy()
    dis = (dis + dis.T) / 2.0
    if not np.isfinite(dis).all():
        i, j = np.argwhere(~np.isfinite(dis))[0]
        raise ValueError(f"measure={measure!r} has no value for models {names[i]!r} and {names[j]!r}; "
                         "a dendrogram needs every pair")
    np.fill_diagonal(dis, 0.0)
    dis = np.clip(dis, 0.0, None)
    z = linkage(squareform(dis, checks=False), method="average")
    labels = [_txt(x, 36) for x in names]
    left = 0.25 + 0.068 * max(len(x) for x in labels)
    ax_w, ax_h = 3.4, float(np.clip(0.36 * k, 1.5, 8.0))
    width, height = left + ax_w + 0.3, ax_h + 1.0
    fig = _new_figure((width, height), dpi)
    with matplotlib.rc_context(_RC):
        ax = fig.add_axes((left / width, 0.6 / height, ax_w / width, ax_h / height))
        dendrogram(z, labels=labels, orientation="right", ax=ax, color_threshold=0,
                   above_threshold_color="#31688e", leaf_font_size=8)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        ax.tick_params(axis="y", length=0)
        what = f"{info.identity:g} \u2212 {_txt(measure)}" if info.higher_is_more_alike else _txt(measure)
        both = "; mean of both directions" if not info.symmetric else ""
        ax.set_xlabel(f"{what}  ({_HOW_TITLE[how]}{both}; average linkage)")
        ax.set_title(f"models clustered by {_txt(measure)}", fontweight="bold", fontsize=10)
        ax.set_xlim(left=0)
        return _save(fig, path, dpi)


def plot_controls(
    frame: pd.DataFrame, measure: str, path: str | os.PathLike, *, models: Sequence[str] | None = None,
    measure_info: Callable[[str], Any] | None = None, dpi: int = DPI,
) -> Path:
    """Draw each pair's score beside its controls and save it as a PNG.

    One row per model pair: the score at the best-matching layer pair (filled circle, with its bootstrap
    95% interval) and at the final layers (diamond), the random-init control at the best layer pair
    (open square) and the permutation null there (grey cross, bar = mean +- 1.96 null std). A score not
    distinguishable from its null (Benjamini-Hochberg q >= 0.05 over the pair's layer pairs) is drawn
    hollow and its row is labelled "n.s.". Rows follow the order of ``models`` (default: study order).

    Raises:
        ValueError: invalid frame or no rows for ``measure``.
    """
    from .analysis import VERDICT_NS, controls_table

    info = resolve_measure_info(measure, measure_info)
    table = controls_table(frame, measure, info)
    if models is not None:
        rank = {m: k for k, m in enumerate(dict.fromkeys(str(x) for x in models))}
        table = table.assign(_r=[(rank.get(a, 1e9), rank.get(b, 1e9)) for a, b in
                                 zip(table.model_a, table.model_b, strict=True)]).sort_values("_r", kind="stable")
    k = len(table)
    arrow = " \u2192 " if not info.symmetric else " vs "
    labels = [_txt(f"{a}{arrow}{b}", 44) + ("   (n.s.)" if v == VERDICT_NS else "")
              for a, b, v in zip(table.model_a, table.model_b, table.best_verdict, strict=True)]
    left = 0.3 + 0.062 * max((len(x) for x in labels), default=8)
    ax_w, row_h = 4.0, 0.34
    ax_h = max(row_h * k, 0.9)
    width, height = left + ax_w + 0.3, ax_h + 1.75
    values = np.concatenate([table[c].astype(float).to_numpy() for c in
                             ("best", "final", "best_ci_low", "best_ci_high", "best_random_init", "best_null_mean")])
    lo, hi, _ = _colour_scale(info, values)
    fig = _new_figure((width, height), dpi)
    with matplotlib.rc_context(_RC):
        ax = fig.add_axes((left / width, 1.05 / height, ax_w / width, ax_h / height))
        y = np.arange(k)[::-1].astype(float)
        for yi, r in zip(y, table.itertuples(index=False), strict=True):
            _draw_controls_row(ax, yi, r, r.best_verdict == VERDICT_NS)
        ax.set_yticks(y, labels)
        ax.set_ylim(-0.7, k - 0.3)
        pad = 0.03 * (hi - lo)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel(f"{_txt(measure)} ({'higher' if info.higher_is_more_alike else 'lower'} = more alike)")
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        ax.set_title(f"{_txt(measure)}: each score beside its controls", fontweight="bold", fontsize=10)
        fig.legend(handles=_controls_legend(table, VERDICT_NS), loc="lower center", bbox_to_anchor=(0.5, 0.02), ncols=3, frameon=False,
                   handletextpad=0.4, columnspacing=1.2, fontsize=7.5)
        return _save(fig, path, dpi)


_BLUE, _ORANGE = "#31688e", "#e08214"


def _controls_legend(table: pd.DataFrame, ns_verdict: str) -> list[Line2D]:
    """The legend of the controls figure: the scores, and each control only where the figure draws it."""
    def drawn(col: str) -> bool:
        return col in table and bool(np.isfinite(table[col].astype(float)).any())

    handles = [Line2D([], [], color=_BLUE, lw=1.4, marker="o", ms=5, label="best layer pair (95% CI)"),
               Line2D([], [], color=_ORANGE, lw=1.0, marker="D", ms=4, label="final layers (95% CI)")]
    if drawn("best_random_init"):
        handles.append(Line2D([], [], ls="none", marker="s", mfc="white", mec="black", ms=5, label="random-init at best"))
    if drawn("best_null_mean"):
        handles.append(Line2D([], [], color="0.55", lw=2.2, marker="x", mec="0.4", ms=5, label="null mean \u00b1 1.96 sd"))
    if (table["best_verdict"] == ns_verdict).any():
        handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec=_BLUE, ms=5, label="n.s.: not above null"))
    return handles


def _draw_controls_row(ax, yi: float, r: Any, ns: bool) -> None:
    """One pair of the controls figure: null mean and bar, random-init, final score and interval, best score
    and interval (hollow where ``ns``)."""
    ax.axhline(yi, color="0.92", lw=0.6, zorder=0)
    nm, nsd = num(r.best_null_mean), num(r.best_null_std)
    if np.isfinite(nm):
        if np.isfinite(nsd):
            ax.plot([nm - 1.96 * nsd, nm + 1.96 * nsd], [yi - 0.18] * 2, color="0.55", lw=2.2, solid_capstyle="butt",
                    zorder=1)
        ax.scatter([nm], [yi - 0.18], marker="x", s=22, c="0.4", linewidths=1.0, zorder=2)
    ri = num(r.best_random_init)
    if np.isfinite(ri):
        ax.scatter([ri], [yi], marker="s", s=26, facecolors="white", edgecolors="black", linewidths=0.9, zorder=3)
    if np.isfinite(num(r.final)):
        flo, fhi = num(r.final_ci_low), num(r.final_ci_high)
        if np.isfinite(flo) and np.isfinite(fhi):
            ax.plot([flo, fhi], [yi + 0.18] * 2, color=_ORANGE, lw=1.0, zorder=3)
        ax.scatter([r.final], [yi + 0.18], marker="D", s=18, c=_ORANGE, zorder=4)
    blo, bhi = num(r.best_ci_low), num(r.best_ci_high)
    if np.isfinite(blo) and np.isfinite(bhi):
        ax.plot([blo, bhi], [yi] * 2, color=_BLUE, lw=1.4, zorder=4)
    if np.isfinite(num(r.best)):
        ax.scatter([r.best], [yi], marker="o", s=34, facecolors="white" if ns else _BLUE, edgecolors=_BLUE,
                   linewidths=1.2, zorder=5)


def plot_probes(
    probes: pd.DataFrame, path: str | os.PathLike, *, models: Sequence[str] | None = None, dpi: int = DPI,
) -> Path:
    """Draw probe accuracy against relative depth, one line per model with its 95% band, and save it.

    ``probes`` has columns ``model, layer, accuracy`` (or ``value``) and optionally ``ci_low, ci_high,
    chance, best``. Relative depth = layer / the model's last probed layer; a star marks each model's best
    layer (``best`` where given, else the most accurate); a dashed line marks chance where given.

    Raises:
        ValueError: ``probes`` lacks model, layer or accuracy.
    """
    from .analysis import normalize_extra, probe_best

    probes = normalize_extra({"probes": probes}).get("probes")
    if probes is None:
        raise ValueError("probes is empty: there is no probe accuracy to draw")
    order = [m for m in dict.fromkeys([*(models or []), *probes["model"].astype(str)]) if
             m in set(probes["model"].astype(str))]
    best = probe_best(probes).set_index("model")
    fig = _new_figure((5.6, 3.4), dpi)
    with matplotlib.rc_context(_RC):
        ax = fig.add_axes((0.1, 0.16, 0.58, 0.74))
        cmap = matplotlib.colormaps["tab10"]
        for k, m in enumerate(order):
            g = probes[probes["model"].astype(str) == m].sort_values("layer")
            layers = g["layer"].astype(float).to_numpy()
            depth = layers / max(layers.max(), 1.0)
            acc = column(g, "accuracy")
            colour = cmap(k % 10)
            lo_, hi_ = column(g, "ci_low"), column(g, "ci_high")
            if np.isfinite(lo_).all() and np.isfinite(hi_).all():
                ax.fill_between(depth, lo_, hi_, color=colour, alpha=0.18, lw=0)
            ax.plot(depth, acc, color=colour, lw=1.3, marker="o", ms=2.5, label=_txt(m, 28))
            if m in best.index:
                b = best.loc[m]
                ax.scatter([b["layer"] / max(layers.max(), 1.0)], [b["accuracy"]], marker="*", s=70,
                           c=[colour], edgecolors="black", linewidths=0.5, zorder=5)
        chance = column(probes, "chance") if "chance" in probes else np.array([])
        chance = chance[np.isfinite(chance)]
        if chance.size:
            ax.axhline(float(np.median(chance)), color="0.4", ls="--", lw=0.9, label="chance")
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("relative depth (layer / last layer)")
        ax.set_ylabel("probe accuracy (test)")
        ax.set_title("linear probe accuracy on the test documents by depth (95% band; star = the layer best on "
                     "validation)", fontsize=9)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        return _save(fig, path, dpi)
