"""Scale benchmark: whole studies on real models, peak memory and time per stage as n grows.

Each case is one study run in a fresh process (so its peak resident memory is its own), with a fresh
representation store (extraction included), on the packaged models. A case names the code it runs:
``"code": "current"`` is this checkout; ``"code": "<commit>"`` runs the study from a ``git worktree`` of that
commit (the path before a change, for a ratio measured in the same run).

Cases (``python -m benchmarks --scale``):

- ``compare``: ``minilm-l6`` against a copy of its folder under another name, no random-init, 100
  permutations and 100 bootstrap replicates, at 1,000 and 8,000 sentences: the ratio of peak memory.
- ``words``: word unit, ``minilm-l6`` against ``mpnet-base`` over 10,000 BBC sentences, ``linear_cka``,
  ``debiased_cka`` and ``cca_rho`` with the permutation null and 100 bootstrap replicates (exact on all
  rows: 32 groups of whole documents; ``memory_mb=2048``, so that all X layers of a block share one Y
  layer's whitening): peak memory, n, and the share of wall time spent scoring (extraction is the floor).
- ``sentences``: all BBC sentences, ``minilm-l6`` against ``mpnet-base`` with random-init controls,
  permutations and bootstrap: peak memory (and the earlier path's, or where it failed).

A result holds ``peak_mb`` (the study process's peak RSS), ``n`` (rows scored), the manifest's timings
(``extract_s`` summed over models and controls, ``measures_s``, ``total_s``) and ``scoring_share``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from ._common import REPO, emit

STUDY = textwrap.dedent("""
    import json, os, resource, sys, time
    cap = os.environ.get("BENCH_MEM_CAP_GB")  # address-space cap: a study that needs more fails cleanly
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (int(float(cap) * 2**30),) * 2)
    import threading
    import homoscope.study.run as stage
    from homoscope.study import Study, run_study

    rss = {"peak": 0.0, "before": None, "during": None}  # sampled resident memory: before and during scoring

    def sample():
        while True:
            with open("/proc/self/status") as fh:
                now = next(int(x.split()[1]) / 1024 for x in fh if x.startswith("VmRSS"))
            rss["peak"] = max(rss["peak"], now)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    score = stage._score

    def timed_score(*a, **k):
        rss["before"], rss["peak"] = rss["peak"], 0.0
        try:
            return score(*a, **k)
        finally:
            rss["during"] = rss["peak"]

    stage._score = timed_score

    spec = json.loads(sys.argv[1])
    floor_wanted = spec.pop("floor", False)
    t0 = time.perf_counter()
    result = run_study(Study(**spec), progress=False, log=None)
    timings = result.manifest["timings"]
    floor = None
    if floor_wanted:  # the cross products of all layer pairs over all rows, at this machine's GEMM rate
        import torch
        f = result.frame
        dims = (f["layer_a"].max() + 1) * f["d_a"].iloc[0], (f["layer_b"].max() + 1) * f["d_b"].iloc[0]
        dt = torch.float64 if set(spec["measures"]) & {"cca_rho", "cca_r2", "svcca", "pwcca"} else torch.float32
        a, b = torch.randn(4096, int(dims[0]), dtype=dt), torch.randn(4096, int(dims[1]), dtype=dt)
        a.T @ b
        t1 = time.perf_counter()
        for _ in range(3):
            a.T @ b
        floor = (time.perf_counter() - t1) / 3 * int(f["n"].max()) / 4096
    print("STUDY " + json.dumps({
        "gemm_floor_s": floor, "extract_peak_mb": rss["before"], "scoring_peak_mb": rss["during"],
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": time.perf_counter() - t0,
        "n": int(result.frame["n"].max()),
        "control_n": int(result.frame["control_n"].max()) if "control_n" in result.frame else None,
        "extract_s": sum(v for k, v in timings.items() if k.startswith("extract/")),
        "measures_s": timings.get("measures"),
        "agreement_s": timings.get("agreement"),
        "total_s": timings.get("total"),
    }), flush=True)
""")

CASES = {
    "compare": dict(models="copy", measures=["linear_cka", "debiased_cka"], permutations=100, bootstrap=100,
                    random_init=False, agreement="off", outliers=True),
    "words": dict(models="minilm-mpnet", measures=["linear_cka", "debiased_cka", "cca_rho"], unit="word", max_rows=0,
                  permutations=100, bootstrap=100, random_init=False, agreement="off", memory_mb=2048, floor=True),
    "sentences": dict(models="minilm-mpnet", measures=["linear_cka", "debiased_cka"], permutations=100,
                      bootstrap=100, random_init=True, agreement="off"),
}


def _models(kind: str, tmp: Path) -> list:
    if kind == "minilm-mpnet":
        return ["minilm-l6", "mpnet-base"]
    from homoscope.models import resolve

    copy = tmp / "minilm-copy"
    shutil.copytree(resolve("minilm-l6").location, copy)
    return ["minilm-l6", {"name": "minilm-copy", "spec": str(copy)}]


def _code_dir(code: str, tmp: Path) -> Path:
    if code == "current":
        return REPO
    where = tmp / f"code-{code[:12]}"
    subprocess.run(["git", "worktree", "add", "--detach", str(where), code], cwd=REPO, check=True,
                   capture_output=True)
    return where


def run_case(spec: dict) -> dict:
    """Run one study case in a fresh process; return its measurements (or its failure)."""
    tmp = Path(tempfile.mkdtemp(prefix="homoscope-scale-"))
    code = spec.get("code", "current")
    where = _code_dir(code, tmp)
    commit = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=where, capture_output=True,
                            text=True).stdout.strip()
    spec = {**spec, "commit": commit + ("+" if code == "current" and _dirty() else "")}
    try:
        base = dict(CASES[spec["case"]])
        study = {**{k: v for k, v in base.items() if k != "models"}, "models": _models(base["models"], tmp),
                 "corpus": "bbc", "sentences": spec.get("sentences"), "out": str(tmp / "out"),
                 "store": str(tmp / "store"), "seed": 0, **spec.get("options", {})}
        env = {**os.environ, "PYTHONPATH": str(where), "TOKENIZERS_PARALLELISM": "false"}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", STUDY, json.dumps(study)], cwd=tmp, env=env,
                              capture_output=True, text=True)  # the runner's per-case timeout governs
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("STUDY ")]
        if not lines:
            err = (proc.stderr or "").strip().splitlines()
            oom = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "out of memory")
            status = "oom" if proc.returncode < 0 or any(k in proc.stderr for k in oom) else "error"
            return {**spec, "status": status, "note": (err[-1] if err else f"exit {proc.returncode}")[-300:],
                    "wall_s": time.perf_counter() - t0}
        out = json.loads(lines[-1][len("STUDY "):])
        if out.get("measures_s") is not None:
            out["scoring_share"] = out["measures_s"] / (out.get("total_s") or out["wall_s"])
        return {**spec, "status": "ok", **out}
    finally:
        if code != "current":
            subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=REPO, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _dirty() -> bool:
    """Whether this checkout's tracked files differ from its commit (the row's code is then not that commit)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                         text=True).stdout
    return bool(out.strip())


def plan(before: str | None = None) -> list[tuple[str, dict, float]]:
    """The scale cases as (module, spec, timeout); ``before`` adds the earlier path's runs of each case."""
    cases = [{"case": "compare", "sentences": 1000}, {"case": "compare", "sentences": 8000},
             {"case": "words", "sentences": 10000}, {"case": "sentences", "sentences": None}]
    hours = {"sentences": 3}  # four models over every BBC sentence: extraction alone is over an hour on 2 cores
    out = [("benchmarks.scale", {**c, "code": "current"}, 3600 * hours.get(c["case"], 2)) for c in cases]
    if before:
        out += [("benchmarks.scale", {**c, "code": before}, 3600 * hours.get(c["case"], 2)) for c in cases
                if c["case"] != "words"]
    return out


def _row(r: dict) -> str:
    def f(x, fmt="{:.0f}"):
        return "" if x is None else fmt.format(x)

    opts = ", ".join(f"{k}={v}" for k, v in r.get("options", {}).items())
    code = r.get("commit") or r.get("code", "current")[:12]
    return (f"| {r['case']} | {r.get('sentences') or 'all'} | {code} | {opts} | "
            f"{r['status']} | {f(r.get('n'))} | {f(r.get('control_n'))} | {f(r.get('peak_mb'))} | "
            f"{f(r.get('extract_peak_mb'))} | {f(r.get('scoring_peak_mb'))} | "
            f"{f(r.get('extract_s'))} | {f(r.get('measures_s'))} | {f(r.get('wall_s'))} | "
            f"{f(r.get('scoring_share'), '{:.1%}')} | {f(r.get('gemm_floor_s'))} | {r.get('note', '')} |")


def targets(results: list[dict]) -> list[str]:
    """The scale targets, each with what was measured (or why it could not be)."""
    ok = [r for r in results if r.get("status") == "ok" and r.get("code", "current") == "current"
          and not r.get("options")]
    out = []
    cmp = {r["sentences"]: r for r in ok if r["case"] == "compare"}
    if 1000 in cmp and 8000 in cmp:
        ratio = cmp[8000]["peak_mb"] / cmp[1000]["peak_mb"]
        out.append(f"- compare, peak memory 8,000 / 1,000 sentences <= 1.5: {ratio:.2f} "
                   f"({cmp[8000]['peak_mb']:.0f} / {cmp[1000]['peak_mb']:.0f} MB): "
                   f"{'held' if ratio <= 1.5 else 'missed'}")
    for r in (r for r in results if r.get("status") == "ok" and r["case"] == "words"):
        share = r.get("scoring_share", float("nan"))
        code = f" (code {r.get('commit') or r.get('code', 'current')})"
        out.append(f"- words{code}, n = {r['n']}: peak {r['peak_mb']:.0f} MB (<= 3,072: "
                   f"{'held' if r['peak_mb'] <= 3072 else 'missed'}); scoring and controls {share:.1%} of the wall "
                   f"time (<= 10%: {'held' if share <= 0.10 else 'missed'})"
                   + (f"; the GEMM floor alone (cross products of all layer pairs over all rows) is "
                      f"{r['gemm_floor_s']:.0f} s, {r['gemm_floor_s'] / (r.get('total_s') or r['wall_s']):.1%} of the "
                      f"wall time" if r.get("gemm_floor_s") else ""))
    for r in (r for r in ok if r["case"] == "sentences"):
        out.append(f"- sentences, n = {r['n']}: peak {r['peak_mb']:.0f} MB (<= 4,096: "
                   f"{'held' if r['peak_mb'] <= 4096 else 'missed'})")
    return out


def write_scale_report(results: list[dict], info: dict) -> Path:
    """``reports/benchmarks/scale.md``: the machine, one line per case, and the targets."""
    from ._common import REPORT_DIR

    lines = ["# Scale benchmark", "", f"Machine: {info.get('cpu')}, {info.get('cores')} cores, "
             f"{info.get('mem_gb')} GB, torch {info.get('torch')}. Command: `{info.get('command')}`.", "",
             "Each case is a whole study in a fresh process with a fresh store (extraction included); "
             "`peak MB` is that process's peak resident memory (and, sampled every 50 ms, its peak before and "
             "during the scoring stage); `scoring` is the scoring stage (measures, "
             "nulls, bootstrap), its share is of the study's wall time; `GEMM floor` (words) is the time of "
             "the cross products of all layer pairs over all rows alone, at the GEMM rate measured in the same "
             "process (float64 where the CCA family is scored): no exact streamed scoring is faster.", "",
             "| case | sentences | code | options | status | n | control n | peak MB | extraction peak MB | "
             "scoring peak MB | extract s | scoring s | wall s | scoring share | GEMM floor s | note |",
             "|" + "---|" * 16]
    lines += [_row(r) for r in results]
    lines += ["", "## Targets", ""] + (targets(results) or ["- no complete pair of cases yet"])
    path = REPORT_DIR / "scale.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    emit({"bench": "scale", **run_case(json.loads(sys.argv[1]))})
