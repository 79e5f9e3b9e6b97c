"""Bootstrap replicates of the CCA family from grouped sums: the time of one replicate, two paths, one run.

``python -m benchmarks.replicates`` builds one layer block of the word-unit scale case (7 X layers of
width 384 against one Y layer of width 768, 32 bootstrap groups, float64 sums of synthetic rows with the
``j^-1/2`` spectrum of :func:`benchmarks._common.make_stacks`) and times
:meth:`homoscope.measures.GroupedMoments.replicates` for ``cca_rho`` over the same replicates twice:

- ``rewhitened`` (the current path): each replicate whitened from the whole sample's basis by a Cholesky
  factor, singular values from the smaller Gram;
- ``own``: each replicate's own eigendecomposition and an SVD (the path before), forced by switching both
  off for the second run.

It writes ``reports/benchmarks/replicates.md`` and ``replicates.json``: seconds per replicate of the
block beyond each call's fixed cost (the whole sample's measure), the ratio, and the largest difference
between the two paths' replicates.
"""
from __future__ import annotations

import json
import time
from unittest import mock

from ._common import REPORT_DIR, machine, make_stacks

LA, DA, DB, GROUPS, REPLICATES, ROWS = 7, 384, 768, 32, 8, 16_384


def _time(acc, W) -> tuple[float, object]:
    """Seconds per replicate beyond a call's fixed cost (the whole sample's measure, once per call): a call
    with one replicate, then one with all, the difference over the extra replicates; and the replicates."""
    t0 = time.perf_counter()
    acc.replicates(["cca_rho"], W[:1])
    t1 = time.perf_counter()
    out = acc.replicates(["cca_rho"], W)["cca_rho"]
    return ((time.perf_counter() - t1) - (t1 - t0)) / (W.shape[0] - 1), out


def run() -> dict:
    """Both paths on the same sums and replicates; returns the measurements."""
    import torch

    from homoscope.measures import GroupedMoments, bootstrap_weights, streaming

    X, _ = make_stacks(ROWS, L=LA, d=DA, seed=0)
    _, Y = make_stacks(ROWS, L=1, d=DB, seed=0)
    Y = Y + X[-1, :, :1].repeat(1, DB) * 0.3  # related sides
    units = torch.arange(ROWS) * GROUPS // ROWS
    acc = GroupedMoments(GROUPS, precision="float64").update(X, Y, units)
    W = bootstrap_weights(GROUPS, REPLICATES, seed=0)
    new_s, new = _time(acc, W)
    own = streaming.CrossMoments._whitened
    with mock.patch.object(streaming.CrossMoments, "_whitened", lambda self, side, any_basis=False: own(self, side)), \
            mock.patch.object(streaming, "_gram_svdvals", torch.linalg.svdvals):
        old_s, old = _time(acc, W)
    return {"block": f"{LA} x {DA} against 1 x {DB}", "groups": GROUPS, "replicates": REPLICATES, "rows": ROWS,
            "rewhitened_s": new_s, "own_s": old_s, "ratio": old_s / new_s,
            "max_abs_diff": float((new - old).abs().max())}


def main() -> None:
    r = {**run(), "machine": machine()}
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "replicates.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    m = r["machine"]
    (REPORT_DIR / "replicates.md").write_text(
        "# Bootstrap replicates of cca_rho from grouped sums\n\n"
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}. "
        "Command: `python -m benchmarks.replicates`.\n\n"
        f"One layer block of the word-unit scale case ({r['block']}, {r['groups']} groups, {r['rows']:,} rows, "
        f"float64 sums), {r['replicates']} replicates, both paths in one run.\n\n"
        "| path | seconds per replicate of the block (beyond the whole sample's measure) |\n|---|---|\n"
        f"| each replicate's own eigendecomposition and SVD (before) | {r['own_s']:.3f} |\n"
        f"| re-whitened from the whole sample, singular values from the smaller Gram | {r['rewhitened_s']:.3f} |\n\n"
        f"Ratio: {r['ratio']:.1f}x faster; largest difference between the paths' replicates: "
        f"{r['max_abs_diff']:.1e}.\n")
    print(json.dumps({k: v for k, v in r.items() if k != "machine"}, default=str))


if __name__ == "__main__":
    main()
