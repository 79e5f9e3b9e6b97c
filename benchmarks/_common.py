"""Shared helpers: machine description, synthetic stacks, timing, one subprocess per case."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REPORT_DIR = REPO / "reports" / "benchmarks"
RESULT_TAG = "BENCH_RESULT "


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, torch version and threads, load average (as seen now)."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gb": mem_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def make_stacks(n: int, L: int = 13, d: int = 768, *, seed: int = 0, offset: float = 0.0, scale: float = 1.0,
                dtype=None):
    """Two correlated synthetic stacks ``X, Y [L, n, d]`` (float32 by default).

    Each layer is a shared latent ``Z`` (anisotropic spectrum ``j^-1/2``) plus noise that grows with
    depth; Y permutes and rescales Z's columns. ``offset`` is added and ``scale`` multiplies every
    entry, to test numerical robustness (the measures are invariant to both).
    """
    import torch

    dtype = dtype or torch.float32
    g = torch.Generator().manual_seed(seed)
    spec = torch.arange(1, d + 1, dtype=torch.float32).pow(-0.5)
    Z = torch.randn(n, d, generator=g) * spec
    perm = torch.randperm(d, generator=g)
    w = torch.rand(d, generator=g) + 0.5
    X = torch.empty(L, n, d, dtype=dtype)
    Y = torch.empty(L, n, d, dtype=dtype)
    for l in range(L):
        X[l] = (Z + (0.05 + 0.1 * l) * torch.randn(n, d, generator=g) * spec) * scale + offset
        Y[l] = (Z[:, perm] * w + (0.05 + 0.12 * (L - 1 - l)) * torch.randn(n, d, generator=g) * spec) * scale + offset
    return X, Y


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> tuple[float, Any, list[float]]:
    """Run ``fn`` ``warmup + repeats`` times; return (median seconds, last result, all timings)."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out, times


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict) -> None:
    """Print a case result for the parent process to pick up."""
    print(RESULT_TAG + json.dumps(result, default=float), flush=True)


def run_subprocess(module: str, spec: dict, *, timeout: float, mem_cap_gb: float | None) -> dict:
    """Run ``python -m <module> '<spec json>'`` in a fresh process; return its result dict.

    A case that exceeds ``timeout`` seconds is reported with status ``timeout``; one that runs out of
    memory (address-space cap ``mem_cap_gb``, MemoryError, or killed by a signal) with ``oom``.
    """
    env = dict(os.environ)
    if mem_cap_gb:
        env["BENCH_MEM_CAP_GB"] = str(mem_cap_gb)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", module, json.dumps(spec)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "status": "timeout", "note": f"did not finish within {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if lines:
        return json.loads(lines[-1][len(RESULT_TAG):])
    err = (proc.stderr or "").strip().splitlines()
    last = err[-1] if err else f"exit code {proc.returncode}"
    oom = proc.returncode < 0 or any(k in (proc.stderr or "") for k in ("MemoryError", "out of memory",
                                                                          "DefaultCPUAllocator", "Cannot allocate"))
    return {**spec, "status": "oom" if oom else "error", "note": last[-300:], "subprocess_s": round(wall, 1)}


def apply_mem_cap() -> None:
    """Cap this process's address space at ``$BENCH_MEM_CAP_GB`` so a peer that needs more memory fails
    cleanly (MemoryError) instead of pushing the shared machine into the OOM killer."""
    cap = os.environ.get("BENCH_MEM_CAP_GB")
    if cap:
        b = int(float(cap) * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (b, b))


DEMO_MODELS = ("smollm2-135m", "gemma3-270m")


def demo_stacks():
    """The stored demo stacks of two packaged models (mean-pooled, 1,000 BBC sentences), or None.

    Reads ``$HOMOSCOPE_HOME/representations`` (filled by ``homoscope demo``): the trained-model stack
    with the most rows for each of :data:`DEMO_MODELS` (smollm2 [31, n, 576] has one dimension carrying
    up to 98% of a layer's variance, a hard case for low-precision CKA).
    """
    import json as _json

    from safetensors.torch import load_file

    from homoscope._paths import homoscope_home

    root = homoscope_home() / "representations"
    out = []
    for model in DEMO_MODELS:
        best = None
        for meta in root.glob(f"{model}-*.json"):
            info = _json.loads(meta.read_text())
            shape = info.get("shape") or [0, 0, 0]
            if "random-init" in meta.name or not meta.with_suffix(".safetensors").exists():
                continue
            if best is None or shape[1] > best[0]:
                best = (shape[1], meta.with_suffix(".safetensors"))
        if best is None:
            return None
        out.append(load_file(str(best[1]))["stack"])
    if out[0].shape[1] != out[1].shape[1]:
        return None
    return out[0], out[1]
