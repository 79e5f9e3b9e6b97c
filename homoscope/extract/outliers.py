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


class OutlierMoments:
    """The outlier report's sums, fed one chunk of rows at a time: memory ``O(L (d + n))``, not ``O(L n d)``.

    Per layer it keeps the column means and sums of squared deviations (merged across chunks by Chan,
    Golub & LeVeque's pairwise update, in float64) and every row's norm (for the median).
    """

    def __init__(self):
        self.n = 0
        self.mean: torch.Tensor | None = None  # [L, d] float64
        self.m2: torch.Tensor | None = None  # [L, d] sums of squared deviations from the mean
        self.norms: list[torch.Tensor] = []  # [L, m] per chunk

    def update(self, chunk: torch.Tensor) -> "OutlierMoments":
        """Add rows ``chunk [L, m, d]`` (any float dtype). Raises ValueError for a chunk that is not 3-D."""
        if chunk.ndim != 3:
            raise ValueError(f"stack must be [L, n, d]; got shape {tuple(chunk.shape)}")
        m = chunk.shape[1]
        if m == 0:
            return self
        # one layer at a time in float64: a shard's float64 copy and its deviations would be 4x its size
        mean = torch.empty(chunk.shape[0], chunk.shape[2], dtype=torch.float64, device=chunk.device)
        m2, norms = torch.empty_like(mean), torch.empty(chunk.shape[0], m, dtype=torch.float64, device=chunk.device)
        for li in range(chunk.shape[0]):
            x = chunk[li].to(torch.float64, copy=True)  # changed in place below
            mean[li] = x.mean(0)
            norms[li] = x.norm(dim=1)
            m2[li] = x.sub_(mean[li]).square_().sum(0)
        if self.mean is None:
            self.mean, self.m2 = mean, m2
        else:
            n, delta = self.n, mean - self.mean
            self.m2 = self.m2 + m2 + delta * delta * (n * m / (n + m))
            self.mean = self.mean + delta * (m / (n + m))
        self.norms.append(norms)
        self.n += m
        return self

    def report(self, labels: list[str] | None = None, row_ids=None) -> list[dict]:
        """One dict per layer (see :func:`outlier_report`); ``row_ids`` maps row positions to reported ids.

        Raises:
            ValueError: no row was added.
        """
        if self.n == 0:
            raise ValueError("no row selected for the outlier report")
        var = self.m2 / self.n
        norms = torch.cat(self.norms, dim=1)
        out = []
        for li in range(var.shape[0]):
            total, top = float(var[li].sum()), int(var[li].argmax())
            j = int(norms[li].argmax())
            row = int(row_ids[j]) if row_ids is not None else j
            med, mx = float(norms[li].median()), float(norms[li, j])
            entry = {"layer": li, "top_dim": top, "top_dim_share": float(var[li, top]) / total if total > 0 else 0.0,
                     "max_norm_row": row, "max_norm": mx, "median_norm": med,
                     "norm_ratio": mx / med if med > 0 else None}
            if labels is not None:
                entry["max_norm_label"] = labels[row]
            out.append(entry)
        return out


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
        :class:`OutlierMoments` gives the same report from chunks of rows.

    Raises:
        ValueError: ``stack`` not 3-D, no row selected, or labels of the wrong length.
    """
    if stack.ndim != 3:
        raise ValueError(f"stack must be [L, n, d]; got shape {tuple(stack.shape)}")
    n = stack.shape[1]
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries; stack has n = {n} rows")
    idx = torch.arange(n) if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
    acc = OutlierMoments()
    for li in range(0, idx.numel(), 4096):
        acc.update(stack.index_select(1, idx[li: li + 4096]))
    return acc.report(labels, row_ids=idx)
