"""Streaming benchmark: exact linear_cka, debiased_cka and cca_rho over 1e5 .. 1e7 rows.

Rows are synthetic, generated chunk by chunk: two layers of width 768 on each side (X ``[2, m, 768]``,
Y ``[2, m, 768]``), fed to one ``homoscope.measures.CrossMoments`` accumulator; the three measures are
computed from its sums for all 2 x 2 layer pairs. One subprocess per n so that peak memory belongs to that
n alone. ``values`` holds the ``[2, 2]`` results; the top-level ``linear_cka`` etc. are the layer pair (0, 0).

Memory: ``peak_mb`` is the peak resident memory of the whole process (torch import included) when the
measures are done, before any reference is computed; it is the number the performance target ("peak
memory at 1e7 rows within 10% of that at 1e5 rows") refers to. ``peak_delta_mb`` is the growth of that peak
over ``baseline_mb``, the peak after the accumulator is allocated and the first chunk processed; ``rss_trace``
lists the peak after 1, 2, 4, 8, ... chunks.

Where the data fit in memory (n <= ``REF_MAX_N``) the result is compared with a float64 one-shot reference
from the same chunk generator: columns centred explicitly in float64 (two passes), CKA from the centred
Gram blocks, CCA from the singular values of ``Lx^-1 Gxy Ly^-T`` (Cholesky of the centred covariances).
Above that, ``ref`` is ``"none"``. ``{"n": ..., "offset": 100}`` adds 100 to every entry of X and subtracts
it from Y (the measures are invariant to it) to test cancellation. ``{"precision": "float64"}`` runs the
accumulator's float64 GEMMs (default ``"float32"``); a measure the accumulator refuses (the CCA family on
float32 sums of ill-conditioned data) is left out of ``values`` and listed in ``refused`` with the reason.
"""

from __future__ import annotations

import json
import sys
import time

from ._common import apply_mem_cap, emit, peak_rss_mb

D = 768
LAYERS = 2
CHUNK = 8192
REF_MAX_N = 200_000
MEASURES = ("linear_cka", "debiased_cka", "cca_rho")


def chunks(n: int, seed: int = 0, offset: float = 0.0):
    """Deterministic chunks ``(x [2, m, D], y [2, m, D])`` float32 of a correlated pair of 2-layer stacks."""
    import torch

    g0 = torch.Generator().manual_seed(seed)
    spec = torch.arange(1, D + 1, dtype=torch.float32).pow(-0.5)
    perm = torch.randperm(D, generator=g0)
    # buffers reused from chunk to chunk (the consumer must not keep a chunk), so the generator's own
    # allocations do not grow the process's peak memory with n
    zb, zpb, nb = torch.empty(CHUNK, D), torch.empty(CHUNK, D), torch.empty(CHUNK, D)
    xb, yb = torch.empty(LAYERS, CHUNK, D), torch.empty(LAYERS, CHUNK, D)
    done, i = 0, 0
    while done < n:
        m = min(CHUNK, n - done)
        g = torch.Generator().manual_seed(seed * 1_000_003 + i + 1)
        z, zp, noise, x, y = zb[:m], zpb[:m], nb[:m], xb[:, :m], yb[:, :m]
        torch.randn(m, D, generator=g, out=z).mul_(spec)
        torch.index_select(z, 1, perm, out=zp)
        for layer in range(LAYERS):
            torch.randn(m, D, generator=g, out=noise).mul_(spec)
            torch.add(z, noise, alpha=0.3 + 0.3 * layer, out=x[layer]).add_(offset)
            torch.randn(m, D, generator=g, out=noise).mul_(spec)
            torch.add(zp, noise, alpha=0.5 + 0.4 * layer, out=y[layer])
            y[layer].add_(zp).sub_(offset)  # 2 z[:, perm] + noise - offset
        yield x, y
        done += m
        i += 1


def reference(n: int, offset: float = 0.0, seed: int = 0) -> dict:
    """Float64 one-shot values ``{measure: [[La x Lb]]}`` of the rows :func:`chunks` yields."""
    import torch

    xs, ys = zip(*((x.clone(), y.clone()) for x, y in chunks(n, seed=seed, offset=offset)))
    X, Y = torch.cat(xs, 1), torch.cat(ys, 1)
    del xs, ys

    def centred(Z):
        Z = Z.double()
        return Z - Z.mean(0, keepdim=True)

    Xc, Yc = [centred(X[a]) for a in range(LAYERS)], [centred(Y[b]) for b in range(LAYERS)]
    del X, Y
    gx, gy = [Z.T @ Z for Z in Xc], [Z.T @ Z for Z in Yc]
    kx, ky = [(Z * Z).sum(1) for Z in Xc], [(Z * Z).sum(1) for Z in Yc]
    c1, c2 = n / (n - 2), 1.0 / ((n - 1) * (n - 2))
    hx = [(g * g).sum() - c1 * (k * k).sum() + c2 * k.sum() ** 2 for g, k in zip(gx, kx)]
    hy = [(g * g).sum() - c1 * (k * k).sum() + c2 * k.sum() ** 2 for g, k in zip(gy, ky)]
    lx, ly = [torch.linalg.cholesky(g) for g in gx], [torch.linalg.cholesky(g) for g in gy]
    out = {m: [[0.0] * LAYERS for _ in range(LAYERS)] for m in MEASURES}
    for a in range(LAYERS):
        for b in range(LAYERS):
            gxy = Xc[a].T @ Yc[b]
            cross = (gxy * gxy).sum()
            out["linear_cka"][a][b] = float(cross / torch.sqrt((gx[a] ** 2).sum() * (gy[b] ** 2).sum()))
            cu = cross - c1 * kx[a] @ ky[b] + c2 * kx[a].sum() * ky[b].sum()
            out["debiased_cka"][a][b] = float(cu / torch.sqrt(hx[a] * hy[b]))
            m = torch.linalg.solve_triangular(lx[a], gxy, upper=False)
            m = torch.linalg.solve_triangular(ly[b], m.T, upper=False).T
            out["cca_rho"][a][b] = float(torch.linalg.svdvals(m).clamp(0, 1).mean())
    return out


def run_case(spec: dict) -> dict:
    import torch

    from homoscope.measures import CrossMoments

    n, offset, seed = int(spec["n"]), float(spec.get("offset", 0.0)), int(spec.get("seed", 0))
    acc = CrossMoments(debiased=True, precision=spec.get("precision", "float32"))
    t_gen = t_upd = 0.0
    trace, k, baseline = {}, 0, None
    it = chunks(n, seed=seed, offset=offset)
    while True:
        tg = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        tu = time.perf_counter()
        t_gen += tu - tg
        acc.update(x, y)
        t_upd += time.perf_counter() - tu
        k += 1
        if k & (k - 1) == 0:  # 1, 2, 4, 8, ...
            trace[k] = round(peak_rss_mb())
        if k == 1:
            baseline = peak_rss_mb()
    del x, y
    trace[k] = round(peak_rss_mb())
    tc = time.perf_counter()
    vals, refused = {}, {}
    for m in MEASURES:
        try:
            vals[m] = acc.compute(m).tolist()
        except ValueError as err:  # the CCA family on float32 sums of ill-conditioned data
            refused[m] = str(err)
    t_cmp = time.perf_counter() - tc
    peak = peak_rss_mb()
    out = {**spec, "bench": "streaming", "status": "ok", "d": D, "layers": f"{LAYERS}x{LAYERS}", "chunk": CHUNK,
           "precision": acc.precision, "f32_rows": acc.f32_rows, "chunks": k,
           "seconds": t_upd + t_cmp, "update_s": t_upd, "compute_s": t_cmp, "generate_s": t_gen,
           "us_per_row": 1e6 * t_upd / n, "peak_mb": round(peak), "baseline_mb": round(baseline),
           "peak_delta_mb": round(peak - baseline), "rss_trace": trace, "threads": torch.get_num_threads(),
           "values": vals, "refused": refused, **{m: vals[m][0][0] for m in vals}}
    if n <= int(spec.get("ref_max_n", REF_MAX_N)):
        tr = time.perf_counter()
        ref = reference(n, offset, seed)
        errs = {m: max(abs(v - r) for vr, rr in zip(vals[m], ref[m]) for v, r in zip(vr, rr)) for m in vals}
        out.update(ref=ref, errors=errs, max_abs_err=max(errs.values()), reference_s=time.perf_counter() - tr)
    else:
        out["ref"] = "none"
    return out


def main(argv: list[str]) -> None:
    apply_mem_cap()
    emit(run_case(json.loads(argv[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
