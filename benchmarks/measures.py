"""Measures benchmark: 13 x 13 layer-pair matrices, homoscope against peers of the same estimator kind.

One case = one (measure, implementation, n, offset, scale) run in its own subprocess:
``python -m benchmarks.measures '<json spec>'``. The float64 reference of a data set is computed once
in a separate subprocess and cached, so reference work never counts towards a case's time or memory.

Implementations (``impl``):

- ``homoscope``: ``homoscope.measures`` in its default mode (means removed in float64, float32 GEMMs,
  float64 accumulation; symmetric Gram blocks or the feature route, whichever needs fewer flops).
- ``homoscope-f64``: the same with ``precision="float64"`` (every GEMM in float64), timed separately.
- ``rsatoolbox``: ``rdm.compare(method="cosine_cov")`` between squared-Euclidean RDMs of every layer,
  which equals biased linear CKA.
- ``pytorch-cka``: ``cka.cka_from_features`` (debiased, one batched call, float32 as given) and its
  ``hsic`` accumulated over minibatches, as ``cka.CKA.compare`` does (minibatch).
- ``cka-pytorch``: ``cka_pytorch.hsic.hsic1`` (debiased), one X layer against all Y layers per call.
- ``ckatorch``: ``ckatorch.core.cka_base`` per pair (float64, biased or debiased).
- ``torch-cka``: ``torch_cka.cka.CKA._HSIC`` per pair on precomputed Grams (debiased).
- ``numpy-f64``: Kornblith et al.'s reference code (numpy float64 Gram, ``center_gram``, ``cka``) per
  pair, Grams computed once per layer (biased or debiased).
- ``loop-f64``: per-pair float64 CCA loop (numpy: centre, QR of both sides, SVD of ``Qx^T Qy``), as
  the SVCCA reference code does per pair; timed on the 13 diagonal pairs and scaled to 169 (stated).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ._common import apply_mem_cap, demo_stacks, emit, make_stacks, median_time, peak_rss_mb

L, D = 13, 768
MB_BATCH = 1024
CACHE = Path(tempfile.gettempdir()) / "homoscope-bench-ref"

KIND = {"linear_cka": "biased", "debiased_cka": "debiased", "minibatch_cka": "minibatch", "cca_rho": "cca"}


# ----------------------------------------------------------------------------------------- references
def _center64(X):
    X = X.double()
    return X - X.mean(dim=1, keepdim=True)


def _grams(Xc):
    return Xc @ Xc.transpose(1, 2)


def ref_linear(X, Y):
    """Biased linear CKA in float64: ``<HKH, HLH> / (||HKH|| ||HLH||)`` from centered features."""
    import torch

    n = X.shape[1]
    if n <= 4096:
        Xc, Yc = _center64(X), _center64(Y)
        K, Lg = _grams(Xc).reshape(X.shape[0], -1), _grams(Yc).reshape(Y.shape[0], -1)
        cross, sx, sy = K @ Lg.T, (K * K).sum(1), (Lg * Lg).sum(1)
    else:
        cross, sx, sy, _, _ = _feature_terms64(X, Y)
    return cross / torch.sqrt(sx[:, None] * sy[None, :])


def _feature_terms64(X, Y):
    """Float64 trace-form terms, one layer pair at a time (memory: the inputs plus two [n, d] float64 layers)."""
    import torch

    def c64(Z, i):
        z = Z[i].double()
        return z - z.mean(0, keepdim=True)

    La, Lb = X.shape[0], Y.shape[0]
    cross = torch.empty(La, Lb, dtype=torch.float64)
    sx, sy = torch.empty(La, dtype=torch.float64), torch.empty(Lb, dtype=torch.float64)
    kx, ky = torch.empty(La, X.shape[1], dtype=torch.float64), torch.empty(Lb, X.shape[1], dtype=torch.float64)
    for b in range(Lb):
        yb = c64(Y, b)
        sy[b], ky[b] = ((yb.T @ yb) ** 2).sum(), (yb * yb).sum(1)
    for a in range(La):
        xa = c64(X, a)
        sx[a], kx[a] = ((xa.T @ xa) ** 2).sum(), (xa * xa).sum(1)
        for b in range(Lb):
            cross[a, b] = ((xa.T @ c64(Y, b)) ** 2).sum()
    return cross, sx, sy, kx, ky


def _hsic1_terms(K, Lg):
    """Unbiased HSIC (Song et al. 2012, eq. 5) for all pairs of Gram stacks, float64, explicit form."""
    import torch

    n = K.shape[-1]
    K, Lg = K.clone(), Lg.clone()
    K.diagonal(dim1=1, dim2=2).zero_()
    Lg.diagonal(dim1=1, dim2=2).zero_()

    def h(A, B):
        tr = A.reshape(A.shape[0], -1) @ B.reshape(B.shape[0], -1).T
        sa, sb = A.sum((1, 2)), B.sum((1, 2))
        ca, cb = A.sum(1), B.sum(1)
        return (tr + torch.outer(sa, sb) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (ca @ cb.T)) / (n * (n - 3))

    return h(K, Lg), torch.diagonal(h(K, K)), torch.diagonal(h(Lg, Lg))


def ref_debiased(X, Y):
    import torch

    n = X.shape[1]
    if n <= 4096:
        c, hx, hy = _hsic1_terms(_grams(_center64(X)), _grams(_center64(Y)))
    else:  # trace form of the same U-statistic (feature route), for n where Grams do not fit
        cross, sx, sy, kx, ky = _feature_terms64(X, Y)
        c1, c2 = n / (n - 2), 1.0 / ((n - 1) * (n - 2))
        c = cross - c1 * kx @ ky.T + c2 * kx.sum(1)[:, None] * ky.sum(1)[None, :]
        hx = sx - c1 * (kx * kx).sum(1) + c2 * kx.sum(1) ** 2
        hy = sy - c1 * (ky * ky).sum(1) + c2 * ky.sum(1) ** 2
    return c / torch.sqrt(hx[:, None] * hy[None, :])


def _batches(n, bs):
    import math

    m = max(1, math.ceil(n / bs))
    base, extra = divmod(n, m)
    out, s = [], 0
    for i in range(m):
        k = base + (1 if i < extra else 0)
        out.append(slice(s, s + k))
        s += k
    return out


def ref_minibatch(X, Y, bs=MB_BATCH):
    c = hx = hy = 0
    for s in _batches(X.shape[1], bs):
        Xc, Yc = _center64(X[:, s]), _center64(Y[:, s])
        ci, xi, yi = _hsic1_terms(_grams(Xc), _grams(Yc))
        c, hx, hy = c + ci, hx + xi, hy + yi
    return c / (hx[:, None] * hy[None, :]).sqrt()


def ref_cca_rho(X, Y):
    import torch

    Qx = [torch.linalg.qr(x)[0] for x in _center64(X)]
    Qy = [torch.linalg.qr(y)[0] for y in _center64(Y)]
    return torch.stack([torch.stack([torch.linalg.svdvals(qa.T @ qb).clamp(0, 1).mean() for qb in Qy]) for qa in Qx])


REFS = {"linear_cka": ref_linear, "debiased_cka": ref_debiased, "minibatch_cka": ref_minibatch, "cca_rho": ref_cca_rho}


def ref_path(measure: str, n: int, offset: float, scale: float, seed: int = 0, data: str | None = None) -> Path:
    key = hashlib.sha1(json.dumps([measure, n, offset, scale, seed, L, D, MB_BATCH] + ([data] if data else []))
                       .encode()).hexdigest()[:16]
    return CACHE / f"{measure}-{n}-{key}.pt"


# ---------------------------------------------------------------------------------------------- peers
def _load_file_module(dotted: str):
    """Import one file of an installed package without running the package's ``__init__`` (which may
    import plotting or training frameworks the benchmark does not need)."""
    import importlib.util

    pkg, mod = dotted.split(".")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{pkg} is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / f"{mod}.py"
    s = importlib.util.spec_from_file_location(f"_bench_{pkg}_{mod}", path)
    m = importlib.util.module_from_spec(s)
    s.loader.exec_module(m)
    return m


def peer_fn(impl: str, measure: str):
    """A callable ``f(X, Y) -> [13, 13]`` for ``impl`` computing ``measure`` (or raise ImportError)."""
    import numpy as np
    import torch

    if impl in ("homoscope", "homoscope-f64"):
        from homoscope import measures as hm

        opts = {"precision": "float64"} if impl == "homoscope-f64" else {}
        if measure == "minibatch_cka":
            return lambda X, Y: hm.minibatch_cka(X, Y, batch_size=MB_BATCH, debiased=True, **opts)
        fn = getattr(hm, measure)
        return (lambda X, Y: fn(X, Y, **opts)) if opts else fn

    if impl == "rsatoolbox" and measure == "linear_cka":
        # cosine_cov between squared-Euclidean RDMs equals biased linear CKA (Diedrichsen et al. 2020)
        from rsatoolbox.data import Dataset
        from rsatoolbox.rdm import calc_rdm, compare

        def f(X, Y):
            rx = calc_rdm([Dataset(x.numpy()) for x in X], method="euclidean")
            ry = calc_rdm([Dataset(y.numpy()) for y in Y], method="euclidean")
            return torch.from_numpy(compare(rx, ry, method="cosine_cov"))
        return f

    if impl == "pytorch-cka":
        from cka import cka_from_features, hsic

        if measure == "debiased_cka":
            return cka_from_features
        if measure == "minibatch_cka":
            def mb(X, Y):
                hxy = hxx = hyy = 0
                for s in _batches(X.shape[1], MB_BATCH):
                    gx = torch.bmm(X[:, s], X[:, s].transpose(1, 2))
                    gy = torch.bmm(Y[:, s], Y[:, s].transpose(1, 2))
                    a, b, c = hsic(gx, gy)
                    hxy, hxx, hyy = hxy + a, hxx + b, hyy + c
                den = torch.sqrt(torch.clamp(hxx.unsqueeze(1) * hyy.unsqueeze(0), min=0.0))
                return torch.clamp(hxy / den, 0.0, 1.0)
            return mb

    if impl == "cka-pytorch" and measure == "debiased_cka":
        hsic1 = _load_file_module("cka_pytorch.hsic").hsic1

        def f(X, Y):
            gx, gy = torch.bmm(X, X.transpose(1, 2)), torch.bmm(Y, Y.transpose(1, 2))
            hx, hy = hsic1(gx, gx), hsic1(gy, gy)
            cross = torch.stack([hsic1(gx[a].expand_as(gy), gy) for a in range(gx.shape[0])])
            return cross / torch.sqrt(hx[:, None] * hy[None, :])
        return f

    if impl == "ckatorch" and measure in ("linear_cka", "debiased_cka"):
        from ckatorch.core import cka_base

        unb = measure == "debiased_cka"
        return lambda X, Y: torch.stack([torch.stack([cka_base(x, y, unbiased=unb) for y in Y]) for x in X])

    if impl == "torch-cka" and measure == "debiased_cka":
        from torch_cka.cka import CKA

        obj = CKA.__new__(CKA)
        obj.device = "cpu"

        def f(X, Y):
            gx = [x @ x.T for x in X]
            gy = [y @ y.T for y in Y]
            hx = [obj._HSIC(k, k) for k in gx]
            hy = [obj._HSIC(k, k) for k in gy]
            return torch.tensor([[obj._HSIC(k, l) / (hx[a] * hy[b]) ** 0.5 for b, l in enumerate(gy)]
                                 for a, k in enumerate(gx)])
        return f

    if impl == "numpy-f64" and measure in ("linear_cka", "debiased_cka"):
        unb = measure == "debiased_cka"

        def center_gram(gram, unbiased=False):  # Kornblith et al. (2019) reference code
            gram = gram.copy()
            if unbiased:
                n = gram.shape[0]
                np.fill_diagonal(gram, 0)
                means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
                means -= np.sum(means) / (2 * (n - 1))
                gram -= means[:, None]
                gram -= means[None, :]
                np.fill_diagonal(gram, 0)
            else:
                means = np.mean(gram, 0, dtype=np.float64)
                means -= np.mean(means) / 2
                gram -= means[:, None]
                gram -= means[None, :]
            return gram

        def cka(gx, gy):
            return gx.ravel().dot(gy.ravel()) / (np.linalg.norm(gx) * np.linalg.norm(gy))

        def f(X, Y):
            Xn, Yn = X.double().numpy(), Y.double().numpy()
            gx = [center_gram(x @ x.T, unb) for x in Xn]
            gy = [center_gram(y @ y.T, unb) for y in Yn]
            return torch.tensor([[cka(a, b) for b in gy] for a in gx])
        return f

    if impl == "loop-f64" and measure == "cca_rho":
        def pair(x, y):
            x = x - x.mean(0)
            y = y - y.mean(0)
            qx, _ = np.linalg.qr(x)
            qy, _ = np.linalg.qr(y)
            return np.clip(np.linalg.svd(qx.T @ qy, compute_uv=False), 0, 1).mean()

        def f(X, Y):  # the 13 diagonal pairs only; time is scaled by 169/13 (stated in the note)
            Xn, Yn = X.double().numpy(), Y.double().numpy()
            return torch.tensor([pair(Xn[a], Yn[a]) for a in range(X.shape[0])])
        return f

    raise ValueError(f"no implementation {impl!r} for {measure!r}")


# ----------------------------------------------------------------------------------------------- flops
def flops(measure: str, n: int, La: int = L, da: int = D, Lb: int = L, db: int = D) -> tuple[float, str, tuple]:
    """FLOP lower bound of the cheaper exact route, its name, and the dominant GEMM shape (b, m, k, n)."""
    if measure == "minibatch_cka":
        total, shape = 0.0, None
        for s in _batches(n, MB_BATCH):
            f, _, shape = flops("linear_cka", s.stop - s.start, La, da, Lb, db)
            total += f
        return total, "gram per batch", shape
    if measure == "cca_rho":
        qr = (La + Lb) * (4 * n * da * da - 4 / 3 * da**3)  # Householder QR + forming Q
        cross = 2 * n * La * da * Lb * db
        svd = La * Lb * 22 * da**3 / 3  # rough Golub-Kahan estimate, singular values only
        return qr + cross + svd, "qr + cross + svd (est.)", (1, La * da, n, Lb * db)
    gram = 2 * n * n * (La * da + Lb * db + La * Lb)
    feat = 2 * n * (La * da * Lb * db + La * da * da + Lb * db * db)
    if gram <= feat:
        return gram, "gram", (La, n, da, n)
    return feat, "feature", (1, La * da, n, Lb * db)


def matmul_rate(shape: tuple, dtype_name: str, repeats: int = 3) -> float:
    """GFLOP/s of a plain torch.matmul of ``[b, m, k] @ [b, k, n]`` in this process, now."""
    import torch

    b, m, k, nn = shape
    # the rate of these shapes no longer changes beyond ~2,048 along any axis; cap so that measuring the
    # limit does not take longer than the case itself
    if b > 1:
        m, nn = min(m, 2048), min(nn, 2048)
    else:
        k = min(k, 2048)
    dt = getattr(torch, dtype_name)
    A = torch.randn(b, m, k, dtype=dt)
    B = torch.randn(b, k, nn, dtype=dt)
    t, _, _ = median_time(lambda: torch.matmul(A, B), repeats if dtype_name == "float32" else 1, warmup=1)
    return 2 * b * m * k * nn / t / 1e9


# ------------------------------------------------------------------------------------------------ cases
def load_data(spec: dict):
    """``(X, Y)`` of a case: synthetic ``[13, n, 768]`` stacks, or the stored demo stacks (``data: demo``)."""
    if spec.get("data") == "demo":
        pair = demo_stacks()
        if pair is None:
            raise FileNotFoundError("no stored demo stacks: run `homoscope demo` first")
        return pair
    return make_stacks(spec["n"], L, D, offset=spec.get("offset", 0.0), scale=spec.get("scale", 1.0))


def run_reference(spec: dict) -> dict:
    import torch

    path = ref_path(spec["measure"], spec["n"], spec.get("offset", 0.0), spec.get("scale", 1.0), data=spec.get("data"))
    if not path.exists():
        try:
            X, Y = load_data(spec)
        except FileNotFoundError as err:
            return {**spec, "status": "not available", "note": str(err)}
        t0 = time.perf_counter()
        R = REFS[spec["measure"]](X, Y)
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(R, str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)
        return {**spec, "status": "ok", "seconds": time.perf_counter() - t0}
    return {**spec, "status": "cached"}


def run_case(spec: dict) -> dict:
    import torch

    measure, impl, n = spec["measure"], spec["impl"], spec["n"]
    offset, scale = spec.get("offset", 0.0), spec.get("scale", 1.0)
    out = {**spec, "bench": "measures", "kind": KIND[measure], "d": D, "layers": f"{L}x{L}"}
    try:
        fn = peer_fn(impl, measure)
    except ImportError as err:
        return {**out, "status": "not installed", "note": str(err)}
    try:
        X, Y = load_data(spec)
    except FileNotFoundError as err:
        return {**out, "status": "not available", "note": str(err)}
    if spec.get("data") == "demo":
        out.update(d=f"{X.shape[2]}x{Y.shape[2]}", layers=f"{X.shape[0]}x{Y.shape[0]}", n=X.shape[1])
    base_mb = peak_rss_mb()
    repeats = spec.get("repeats", 3)
    # one untimed call first for every implementation at small n (first-call allocations, lazy imports),
    # except peers that take tens of seconds per call
    warm = 1 if (n <= 1024 and measure != "cca_rho" and impl not in ("ckatorch", "cka-pytorch", "torch-cka")) else 0
    try:
        t, R, times = median_time(lambda: fn(X, Y), repeats, warmup=warm)
    except (MemoryError, RuntimeError) as err:
        msg = str(err).splitlines()[0][:200]
        status = "oom" if ("memory" in msg.lower() or isinstance(err, MemoryError) or "alloc" in msg.lower()) else "error"
        return {**out, "status": status, "note": msg, "input_mb": base_mb}
    peak = peak_rss_mb()
    note = ""
    if impl == "loop-f64":
        t *= (L * L) / L
        note = "timed on the 13 diagonal pairs, scaled x13 to 169 pairs"
    out.update(status="ok", seconds=t, times=[round(x, 4) for x in times], peak_mb=round(peak), input_mb=round(base_mb),
               threads=torch.get_num_threads(), note=note)
    ref = ref_path(measure, spec["n"], offset, scale, data=spec.get("data"))
    if ref.exists():
        Rf = torch.load(ref)
        if impl == "loop-f64":
            Rf = torch.diagonal(Rf)
        R = torch.as_tensor(R).double()
        out["max_abs_err"] = float((R - Rf).abs().max())
    if impl.startswith("homoscope") and spec.get("data") != "demo":
        fl, route, shape = flops(measure, n)
        out["flops"], out["bound_route"] = fl, route
        out["gflops"] = fl / t / 1e9  # effective rate: the bound's flops over homoscope's time
        if measure in ("linear_cka", "debiased_cka"):
            from homoscope.measures._hsic import choose_route

            out["route"] = choose_route(n, L, D, L, D)
            out["flops_done"] = (n * n * 2 * L * D + 2 * n * n * L * L if out["route"] == "gram"
                                 else 2 * n * L * D * L * D + 2 * n * 2 * L * D * D)
        del X, Y
        out["matmul_f32_gflops"] = matmul_rate(shape, "float32")
        out["matmul_f64_gflops"] = matmul_rate(shape, "float64")
        key = "matmul_f64_gflops" if impl == "homoscope-f64" else "matmul_f32_gflops"
        out["roofline_pct"] = 100 * (fl / (out[key] * 1e9)) / t
        out["roofline_of"] = key.split("_")[1]
    return out


def main(argv: list[str]) -> None:
    apply_mem_cap()
    spec = json.loads(argv[0])
    emit(run_reference(spec) if spec.get("reference") else run_case(spec))


if __name__ == "__main__":
    main(sys.argv[1:])
