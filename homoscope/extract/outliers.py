"""Outlier dimensions and massive activations, per layer, so they are visible next to the scores.

A few hidden dimensions of a transformer can hold most of the variance ("rogue dimensions",
Timkey & van Schijndel 2021, "All Bark and No Bite", EMNLP), and a few tokens (often BOS or the
first token) can carry activations orders of magnitude larger than the rest ("massive activations",
Sun et al. 2024). Both can dominate linear CKA, which weighs directions by their variance. This
report says, for each layer, how much of the total variance the top dimension holds and which row
has the largest norm.
"""
from __future__ import annotations

import torch


def outlier_report(stack: torch.Tensor, labels: list[str] | None = None, rows=None) -> list[dict]:
    """Per layer: the share of variance held by the top dimension and the row with the largest norm.

    Args:
        stack: ``[L, n, d]`` representations (any float dtype; computed in float64, layer by layer).
        labels: optional readable id per row (length n), reported for the max-norm row.
        rows: optional row indices to use (e.g. the rows every model covers); default all.

    Returns:
        one dict per layer: ``layer``, ``top_dim`` (index of the highest-variance dimension),
        ``top_dim_share`` (its variance / total variance, in [0, 1]; 0 when all variance is zero),
        ``max_norm_row`` (row index into ``stack``), ``max_norm_label`` (if labels are given),
        ``max_norm``, ``median_norm`` and ``norm_ratio`` (max / median; None when the median is 0).

    Raises:
        ValueError: ``stack`` not 3-D, no row selected, or labels of the wrong length.
    """
    if stack.ndim != 3:
        raise ValueError(f"stack must be [L, n, d]; got shape {tuple(stack.shape)}")
    n = stack.shape[1]
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries; stack has n = {n} rows")
    idx = torch.arange(n) if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
    if idx.numel() == 0:
        raise ValueError("no row selected for the outlier report")
    report = []
    for li in range(stack.shape[0]):
        x = stack[li].index_select(0, idx).double()
        var = x.var(dim=0, unbiased=False) if x.shape[0] > 1 else torch.zeros(x.shape[1], dtype=torch.float64)
        total = float(var.sum())
        top = int(var.argmax())
        norms = x.norm(dim=1)
        j = int(norms.argmax())
        row = int(idx[j])
        med = float(norms.median())
        mx = float(norms[j])
        entry = {
            "layer": li,
            "top_dim": top,
            "top_dim_share": float(var[top]) / total if total > 0 else 0.0,
            "max_norm_row": row,
            "max_norm": mx,
            "median_norm": med,
            "norm_ratio": mx / med if med > 0 else None,
        }
        if labels is not None:
            entry["max_norm_label"] = labels[row]
        report.append(entry)
    return report
