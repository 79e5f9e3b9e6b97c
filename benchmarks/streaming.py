"""Streaming benchmark: exact linear_cka, debiased_cka and cca_rho over 1e5 .. 1e7 rows.

Rows are synthetic, generated chunk by chunk (two layers of width 768: X ``[1, m, 768]``,
Y ``[1, m, 768]``), fed to one ``homoscope.measures.CrossMoments`` accumulator, and the three measures
are computed from its sums. One subprocess per n so that peak memory belongs to that n alone. Where
the full data fit in memory (n = 1e5) the result is compared with a float64 one-shot reference
computed from the same rows (centred QR/SVD for CCA, explicit formulas for CKA).
"""

from __future__ import annotations

import json
import sys
import time

from ._common import apply_mem_cap, emit, peak_rss_mb

D = 768
CHUNK = 8192
REF_MAX_N = 200_000


def chunks(n: int, seed: int = 0, offset: float = 0.0):
    """Deterministic chunks ``(x [1, m, D], y [1, m, D])`` float32 of a correlated pair."""
    import torch

    g0 = torch.Generator().manual_seed(seed)
    spec = torch.arange(1, D + 1, dtype=torch.float32).pow(-0.5)
    perm = torch.randperm(D, generator=g0)
    done, i = 0, 0
    while done < n:
        m = min(CHUNK, n - done)
        g = torch.Generator().manual_seed(seed * 1_000_003 + i + 1)
        z = torch.randn(m, D, generator=g) * spec
        x = z + 0.3 * torch.randn(m, D, generator=g) * spec + offset
        y = z[:, perm] * 2.0 + 0.5 * torch.randn(m, D, generator=g) * spec - offset
        yield x[None], y[None]
        done += m
        i += 1


def reference(n: int, offset: float = 0.0) -> dict:
    import torch

    from .measures import _center64

    xs, ys = zip(*chunks(n, offset=offset))
    X, Y = torch.cat(xs, 1), torch.cat(ys, 1)
    Xc, Yc = _center64(X)[0], _center64(Y)[0]
    cxy, cxx, cyy = Xc.T @ Yc, Xc.T @ Xc, Yc.T @ Yc
    lin = (cxy**2).sum() / torch.sqrt((cxx**2).sum() * (cyy**2).sum())
    kx, ky = (Xc * Xc).sum(1), (Yc * Yc).sum(1)
    c1, c2 = n / (n - 2), 1.0 / ((n - 1) * (n - 2))
    cu = (cxy**2).sum() - c1 * kx @ ky + c2 * kx.sum() * ky.sum()
    hx = (cxx**2).sum() - c1 * (kx * kx).sum() + c2 * kx.sum() ** 2
    hy = (cyy**2).sum() - c1 * (ky * ky).sum() + c2 * ky.sum() ** 2
    qx, qy = torch.linalg.qr(Xc)[0], torch.linalg.qr(Yc)[0]
    rho = torch.linalg.svdvals(qx.T @ qy).clamp(0, 1).mean()
    return {"linear_cka": float(lin), "debiased_cka": float(cu / torch.sqrt(hx * hy)), "cca_rho": float(rho)}


def run_case(spec: dict) -> dict:
    import torch

    from homoscope.measures import CrossMoments

    n, offset = int(spec["n"]), float(spec.get("offset", 0.0))
    acc = CrossMoments(debiased=True)
    t_gen = 0.0
    t0 = time.perf_counter()
    it = chunks(n, offset=offset)
    while True:
        tg = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        t_gen += time.perf_counter() - tg
        acc.update(x, y)
    t_upd = time.perf_counter() - t0 - t_gen
    tc = time.perf_counter()
    vals = {m: float(acc.compute(m)[0, 0]) for m in ("linear_cka", "debiased_cka", "cca_rho")}
    t_cmp = time.perf_counter() - tc
    peak = peak_rss_mb()
    out = {**spec, "bench": "streaming", "status": "ok", "d": D, "layers": "1x1", "chunk": CHUNK,
           "seconds": t_upd + t_cmp, "update_s": t_upd, "compute_s": t_cmp, "generate_s": t_gen,
           "us_per_row": 1e6 * t_upd / n, "peak_mb": round(peak), "threads": torch.get_num_threads(), **vals}
    if n <= REF_MAX_N:
        ref = reference(n, offset)
        out["max_abs_err"] = max(abs(vals[k] - ref[k]) for k in ref)
        out["ref"] = ref
    return out


def main(argv: list[str]) -> None:
    apply_mem_cap()
    emit(run_case(json.loads(argv[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
