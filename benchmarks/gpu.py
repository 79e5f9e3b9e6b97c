"""Run the benchmarks on one CUDA device in one go: ``python -m benchmarks.gpu [--quick]``.

Same cases as the CPU run, in one process (CUDA memory is measured with
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, so no subprocess per case):

- measures: homoscope in its default mode (means removed in float64, float32 GEMMs with TF32 off,
  float64 accumulation) and with ``precision="float64"``, against pytorch-cka,
  cka-pytorch, torch-cka and ckatorch on the same device (they compute in the dtype given: float32),
  with TF32 switched OFF for every matmul (``torch.backends.cuda.matmul.allow_tf32 = False``,
  ``torch.backends.cudnn.allow_tf32 = False``) so float32 peers are not silently run at 10-bit mantissa;
  plain float32 and float64 matmul rates of the dominant shape in the same run; errors against a float64
  reference computed on the device with the formulas of ``benchmarks.measures``.
- extraction: the packaged models in bfloat16 (``load_model(..., dtype=torch.bfloat16)``), homoscope
  ``extract`` against a bare forward and an unsorted loader.
- streaming: ``CrossMoments`` fed device chunks, n = 1e5, 1e6, 1e7; peak device memory per n.
- demo: the four-model demo end to end on the device (controls on) from an empty store (target: under 60 s),
  then rerun from the store.

Writes ``reports/benchmarks/gpu/results.csv`` and ``README.md``. Times use ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from . import measures as bm
from ._common import REPORT_DIR, machine, make_stacks


def _sync():
    torch.cuda.synchronize()


def timed(fn, repeats):
    out, ts = None, []
    out = fn()  # warm-up
    _sync()
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def rate(shape, dtype):
    b, m, k, n = shape
    A = torch.randn(b, m, k, device="cuda", dtype=dtype)
    B = torch.randn(b, k, n, device="cuda", dtype=dtype)
    t, _ = timed(lambda: torch.matmul(A, B), 5)
    return 2 * b * m * k * n / t / 1e9


def measures_bench(sizes, repeats):
    rows = []
    peers = {"linear_cka": ["homoscope-f64"], "debiased_cka": ["homoscope-f64", "pytorch-cka", "cka-pytorch",
                                                                "torch-cka", "ckatorch"],
             "minibatch_cka": ["pytorch-cka"], "cca_rho": []}
    for measure in ("linear_cka", "debiased_cka", "minibatch_cka", "cca_rho"):
        for n in sizes:
            X, Y = make_stacks(n, bm.L, bm.D)
            X, Y = X.cuda(), Y.cuda()
            try:
                ref = bm.REFS[measure](X, Y) if n <= 16384 else None
            except torch.cuda.OutOfMemoryError:
                ref = None
            torch.cuda.empty_cache()
            fl, route, shape = bm.flops(measure, n)
            r32, r64 = rate(shape, torch.float32), rate(shape, torch.float64)
            t_h = None
            for impl in ["homoscope"] + peers[measure]:
                if impl in ("ckatorch", "torch-cka") and n > 4096:
                    continue
                row = {"bench": "measures", "measure": measure, "impl": impl, "n": n, "d": bm.D, "route": route}
                try:
                    fn = bm.peer_fn(impl, measure)
                    torch.cuda.reset_peak_memory_stats()
                    t, R = timed(lambda fn=fn, X=X, Y=Y: fn(X, Y), repeats)
                    row.update(status="ok", seconds=t, peak_mb=torch.cuda.max_memory_allocated() / 2**20)
                    if ref is not None:
                        row["max_abs_err"] = float((torch.as_tensor(R, device="cuda").double() - ref).abs().max())
                    if impl == "homoscope":
                        t_h = t
                        row.update(gflops=fl / t / 1e9, matmul_f32_gflops=r32, matmul_f64_gflops=r64,
                                   roofline_pct=100 * fl / (r32 * 1e9) / t)
                    elif t_h:
                        row["ratio_vs_homoscope"] = t / t_h
                except torch.cuda.OutOfMemoryError as err:
                    row.update(status="oom", note=str(err).splitlines()[0][:200])
                except Exception as err:  # noqa: BLE001 - a failing peer is a result, not a crash
                    row.update(status="error", note=f"{type(err).__name__}: {str(err)[:200]}")
                torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row, default=float), flush=True)
            del X, Y
            torch.cuda.empty_cache()
    return rows


def streaming_bench(ns):
    from homoscope.measures import CrossMoments

    from .streaming import chunks

    rows = []
    for n in ns:
        torch.cuda.reset_peak_memory_stats()
        acc = CrossMoments(debiased=True, precision="float64")
        t0 = time.perf_counter()
        for x, y in chunks(n):
            acc.update(x.cuda(non_blocking=True), y.cuda(non_blocking=True))
        vals = {m: float(acc.compute(m)[0, 0]) for m in ("linear_cka", "debiased_cka", "cca_rho")}
        _sync()
        t = time.perf_counter() - t0
        rows.append({"bench": "streaming", "n": n, "status": "ok", "seconds": t, "us_per_row": 1e6 * t / n,
                     "peak_mb": torch.cuda.max_memory_allocated() / 2**20, **vals})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def extraction_bench(models, sentences):
    from homoscope.corpora import load_corpus
    from homoscope.extract import extract
    from homoscope.models import load_model

    rows = []
    texts = list(load_corpus("bbc", sentences=sentences).texts)
    for name in models:
        loaded = load_model(name, device="cuda", dtype=torch.bfloat16)
        t, _ = timed(lambda m=loaded: extract(m, texts, progress=False), 3)
        rows.append({"bench": "extraction", "model": name, "n": len(texts), "status": "ok", "seconds": t,
                     "units_per_s": len(texts) / t, "dtype": "bfloat16"})
        print(json.dumps(rows[-1]), flush=True)
        del loaded
        torch.cuda.empty_cache()
    return rows


def demo_bench(dtype: str = "float32"):
    """The four-model demo end to end on the device (``homoscope demo --device cuda``, controls on) from an empty
    store and output folder, then rerun from the store; the models are loaded from the local install."""
    import dataclasses
    import tempfile

    from homoscope.cli import COMMAND_DEFAULTS
    from homoscope.study import PACKAGED_DEMO_MODELS, Study, run_study

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        study = Study(**{**COMMAND_DEFAULTS["demo"], "models": list(PACKAGED_DEMO_MODELS), "out": f"{tmp}/out",
                         "store": f"{tmp}/store", "device": "cuda", "dtype": dtype})
        for when in ("empty store", "rerun"):
            t0 = time.perf_counter()
            result = run_study(dataclasses.replace(study), progress=False, log=None)
            _sync()
            rows.append({"bench": "demo", "when": when, "dtype": dtype, "status": "ok",
                         "seconds": time.perf_counter() - t0, "timings": result.manifest["timings"],
                         "target_s": 60.0})
            print(json.dumps(rows[-1], default=float), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu needs a CUDA device; none is visible")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    info = machine()
    info["mode"] = "gpu-quick" if args.quick else "gpu"
    info["tf32"] = False
    sizes = [1024, 4096, 16384] if args.quick else [1024, 4096, 16384, 65536]
    rows = demo_bench()
    rows += measures_bench(sizes, 3)
    rows += streaming_bench([100_000, 1_000_000] if args.quick else [100_000, 1_000_000, 10_000_000])
    rows += extraction_bench(["minilm-l6"] if args.quick else ["minilm-l6", "mpnet-base", "smollm2-135m", "gemma3-270m"],
                             1000)
    out = REPORT_DIR / "gpu"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("\n".join(json.dumps(r, default=float) for r in [{"bench": "machine", **info}] + rows) + "\n")
    import benchmarks.report as rep

    old = rep.REPORT_DIR
    rep.REPORT_DIR = out
    try:
        rep.write_report(rows, info)
    finally:
        rep.REPORT_DIR = old


if __name__ == "__main__":
    main()
