"""The zoo's training curves: ``curves.csv`` (loss per step per model) and ``curves.png`` (one panel per family)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .families import FAMILY

#: The columns of ``curves.csv``: ``loss`` is the mean per-token cross-entropy of the step's batch in nats,
#: over the next tokens (``objective`` ``next-token``) or over the masked tokens (``masked-token``).
CURVE_COLUMNS = ("family", "seed", "step", "loss", "objective")
#: Steps averaged by the figure's running mean (the raw losses are drawn faintly behind it).
SMOOTHING = 10


def write_curves(path: Path, curves: dict[tuple[str, int], list[float]]) -> None:
    """Write ``curves`` (``(family, seed)`` -> loss per step, nats) as ``curves.csv``: one row per model and
    step (steps counted from 1), columns :data:`CURVE_COLUMNS`."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CURVE_COLUMNS)
        for (family, seed), losses in curves.items():
            for step, loss in enumerate(losses, start=1):
                w.writerow([family, seed, step, repr(float(loss)), FAMILY[family].objective])


def _running_mean(values: list[float], k: int) -> np.ndarray:
    """The mean of each value and up to ``k - 1`` before it."""
    v = np.asarray(values, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - k)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_curves(path: Path, curves: dict[tuple[str, int], list[float]], *, entropy: dict[str, float],
                title: str, dpi: int = 150) -> None:
    """Draw ``curves.png``: one panel per family (shared y axis), one line per seed (a running mean of
    :data:`SMOOTHING` steps over the faint raw losses), the unigram entropy of the family's targets
    (``entropy``, by objective) dashed, and ``title`` above."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    families = list(dict.fromkeys(f for f, _ in curves))
    fig = Figure(figsize=(3.6 * len(families) + 0.6, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(families), sharey=True, squeeze=False)[0]
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
    for ax, family in zip(axes, families):
        seeds = [s for f, s in curves if f == family]
        for k, seed in enumerate(seeds):
            losses, color = curves[(family, seed)], colors[k % len(colors)]
            steps = np.arange(1, len(losses) + 1)
            ax.plot(steps, losses, color=color, alpha=0.2, linewidth=0.7)
            ax.plot(steps, _running_mean(losses, SMOOTHING), color=color, linewidth=1.4, label=f"seed {seed}")
        objective = FAMILY[family].objective
        ax.axhline(entropy[objective], color="0.35", linestyle="--", linewidth=1.0, label="unigram entropy")
        ax.set_title(f"{FAMILY[family].description}\n({objective} loss)", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(True, color="0.9", linewidth=0.6)
        ax.legend(fontsize=7, frameon=False)
    axes[0].set_ylabel("cross-entropy (nats per token)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=dpi)
