"""``python -m benchmarks [--quick] [--only measures,extraction,streaming] [--report-only]``.

Runs every case in its own subprocess (peak memory per case), appends results to
``reports/benchmarks/results.jsonl`` and writes ``results.csv`` and ``README.md`` next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ._common import REPORT_DIR, machine, run_subprocess
from .report import write_report

PEERS = {  # measure -> peers of the same estimator kind, with the largest n each is tried at
    "linear_cka": [("homoscope-f64", 16384), ("rsatoolbox", 4096), ("numpy-f64", 16384), ("ckatorch", 1024)],
    "debiased_cka": [("homoscope-f64", 16384), ("pytorch-cka", 16384), ("cka-pytorch", 4096), ("torch-cka", 4096),
                     ("ckatorch", 1024), ("numpy-f64", 4096)],
    "minibatch_cka": [("pytorch-cka", 65536)],
    "cca_rho": [("loop-f64", 16384)],
}
QUICK_PEERS = {
    "linear_cka": [("homoscope-f64", 1024), ("rsatoolbox", 4096), ("numpy-f64", 1024)],
    "debiased_cka": [("homoscope-f64", 1024), ("pytorch-cka", 4096), ("ckatorch", 1024)],
    "minibatch_cka": [("pytorch-cka", 4096)],
    "cca_rho": [("loop-f64", 1024)],
}
# peers that take tens of seconds per call: timed once
SLOW_PEERS = ("ckatorch", "loop-f64", "cka-pytorch", "torch-cka")
# quick mode: no large-n case (``--large`` adds them)
QUICK_LARGE: list[tuple[str, int]] = []


def plan(quick: bool) -> list[tuple[str, dict, float]]:
    """(module, spec, timeout seconds) for every case, references first."""
    sizes = [1024, 4096] if quick else [1024, 4096, 16384, 65536]
    peers = QUICK_PEERS if quick else PEERS
    ref_max = 4096 if quick else 65536
    cases, refs = [], []
    for measure in ("linear_cka", "debiased_cka", "minibatch_cka", "cca_rho"):
        ns = [4096] if (quick and measure == "minibatch_cka") else sizes
        if quick and measure == "cca_rho":
            ns = [1024]
        for n in ns:
            rep = 3 if n <= 1024 else (2 if n <= 4096 else 1)
            if n <= ref_max and not (measure == "cca_rho" and n > 16384):
                refs.append(("benchmarks.measures", {"measure": measure, "n": n, "reference": True}, 1800))
            cases.append(("benchmarks.measures", {"measure": measure, "impl": "homoscope", "n": n,
                                                  "repeats": 1 if measure == "cca_rho" else rep},
                          300 if n <= 16384 else 900))
            for impl, nmax in peers[measure]:
                if n <= nmax:
                    slow = impl in SLOW_PEERS or (impl == "rsatoolbox" and n > 1024)
                    cases.append(("benchmarks.measures", {"measure": measure, "impl": impl, "n": n,
                                                          "repeats": 1 if slow else rep},
                                  300 if quick else 900))
    if quick:
        for measure, n in QUICK_LARGE:
            cases.append(("benchmarks.measures", {"measure": measure, "impl": "homoscope", "n": n, "repeats": 1}, 300))
    # numerical robustness: a large common offset and extreme scales (the measures are invariant to both)
    for off, scale in ([(100.0, 1.0)] if quick else [(100.0, 1.0), (1e4, 1.0), (0.0, 1e-20), (0.0, 1e20)]):
        for measure, impl in (("linear_cka", "homoscope"), ("debiased_cka", "homoscope"), ("debiased_cka", "pytorch-cka")):
            refs.append(("benchmarks.measures", {"measure": measure, "n": 1024, "offset": off, "scale": scale,
                                                 "reference": True}, 600))
            cases.append(("benchmarks.measures", {"measure": measure, "impl": impl, "n": 1024, "offset": off,
                                                  "scale": scale, "repeats": 1, "accuracy": True}, 300))
    # the real demo stacks (smollm2-135m [31, 1000, 576] x gemma3-270m [19, 1000, 640]), if stored
    for measure, impls in (("linear_cka", ("homoscope", "homoscope-f64", "numpy-f64")),
                           ("debiased_cka", ("homoscope", "homoscope-f64", "pytorch-cka"))):
        refs.append(("benchmarks.measures", {"measure": measure, "n": 1000, "data": "demo", "reference": True}, 600))
        for impl in impls:
            cases.append(("benchmarks.measures", {"measure": measure, "impl": impl, "n": 1000, "data": "demo",
                                                  "repeats": 3}, 300))
    seen, unique_refs = set(), []
    for r in refs:
        key = json.dumps(r[1], sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique_refs.append(r)
    return unique_refs + cases


def plan_large() -> list[tuple[str, dict, float]]:
    """The large-n cases alone (``--large``): debiased CKA at 16,384 with its float64 reference and
    pytorch-cka, linear and debiased CKA at 65,536, and streaming over 1e6 rows."""
    out = [("benchmarks.measures", {"measure": "debiased_cka", "n": 16384, "reference": True}, 1800),
           ("benchmarks.measures", {"measure": "debiased_cka", "impl": "homoscope", "n": 16384, "repeats": 1}, 600),
           ("benchmarks.measures", {"measure": "debiased_cka", "impl": "pytorch-cka", "n": 16384, "repeats": 1}, 600)]
    for measure in ("linear_cka", "debiased_cka"):
        out.append(("benchmarks.measures", {"measure": measure, "impl": "homoscope", "n": 65536, "repeats": 1}, 900))
    out.append(("benchmarks.streaming", {"n": 1_000_000}, 1800))
    return out


def _spec_key(r: dict) -> tuple:
    return (r.get("bench"), r.get("measure"), r.get("impl"), r.get("model"), r.get("n"), r.get("offset", 0.0),
            r.get("scale", 1.0), r.get("data"), r.get("case"), r.get("sentences"), r.get("code"))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, one peer per measure (< 10 min on 2 cores)")
    ap.add_argument("--only", default="measures,extraction,streaming", help="comma list of benchmarks to run")
    ap.add_argument("--report-only", action="store_true", help="rewrite csv/md from results.jsonl")
    ap.add_argument("--mem-cap-gb", type=float, default=16.0, help="address-space cap per case (default 16)")
    ap.add_argument("--resume", action="store_true", help="keep results.jsonl and skip cases already in it")
    ap.add_argument("--model", default="minilm-l6", help="extraction: packaged model(s), comma separated")
    ap.add_argument("--large", action="store_true",
                    help="only the large-n exact cases (n = 16,384 and 65,536); add --resume to append them")
    ap.add_argument("--scale", action="store_true",
                    help="only the whole-study scale cases (real models, up to all 34k BBC sentences; about an hour)")
    ap.add_argument("--before", default=None, metavar="COMMIT",
                    help="with --scale: also run the cases on the code of COMMIT (the path before a change)")
    ap.add_argument("--cases", default="compare,words,sentences",
                    help="with --scale: the cases to run (default compare,words,sentences)")
    args = ap.parse_args()
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    jsonl = REPORT_DIR / ("scale.jsonl" if args.scale else "results.jsonl")
    if args.report_only:  # the report of the results file the flags select: scale.md with --scale
        rows = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()]
        machines = [r for r in rows if r.get("bench") == "machine"]
        results, info = [r for r in rows if r.get("bench") != "machine"], machines[-1] if machines else {}
        if args.scale:
            from .scale import write_scale_report

            write_scale_report(results, info)
        else:
            write_report(results, info)
        return
    only = set(args.only.split(","))
    info = machine()
    info["mode"] = ("scale cases" if args.scale else "large-n cases" if args.large
                    else ("quick" if args.quick else "full"))
    info["command"] = " ".join(["python -m benchmarks", *sys.argv[1:]])
    print(f"machine: {info}")
    todo: list[tuple[str, dict, float]] = []
    if args.large:
        only = set()
        todo += plan_large()
    if args.scale:
        from .scale import plan as plan_scale

        only = set()
        todo += [c for c in plan_scale(args.before) if c[1]["case"] in args.cases.split(",")]
    if "measures" in only:
        todo += plan(args.quick)
    if "extraction" in only:
        models = args.model.split(",") if args.quick else ["minilm-l6", "mpnet-base", "smollm2-135m", "gemma3-270m"]
        for m in models:
            todo.append(("benchmarks.extraction", {"model": m, "sentences": 500 if args.quick else 1000,
                                                   "repeats": 3}, 900))
    if "streaming" in only:
        # quick: 2e4 (with the float64 reference) and 1e5 rows; full: 1e5, 1e6, 1e7 (about 2 h of updates on 2 cores)
        for n in ([20_000, 100_000] if args.quick else [100_000, 1_000_000, 10_000_000]):
            spec = {"n": n, "ref_max_n": 20_000} if args.quick else {"n": n}
            todo.append(("benchmarks.streaming", spec, 900 if args.quick else 14_400))
    results, done = [], set()
    if args.resume and jsonl.exists():
        old = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()]
        results = [r for r in old if r.get("bench") != "machine"]
        earlier = [r["command"] for r in old if r.get("bench") == "machine" and r.get("command")]
        info["commands"] = list(dict.fromkeys(earlier + [info["command"]]))
        done = {_spec_key(r) for r in results}
    earlier = []  # scale results accumulate: each case is an hour of its own, scale.md shows the latest of each
    if args.scale and not args.resume and jsonl.exists():
        earlier = [r for r in (json.loads(x) for x in jsonl.read_text().splitlines() if x.strip())
                   if r.get("bench") != "machine"]
    t_all = time.perf_counter()
    with jsonl.open("a" if args.resume or args.scale else "w") as fh:
        fh.write(json.dumps({"bench": "machine", **info}) + "\n")
        for module, spec, timeout in todo:
            if spec.get("reference") and args.resume and all(_spec_key(c) in done for _, c, _ in todo
                                                              if not c.get("reference")):
                continue
            if _spec_key({**spec, "bench": module.split(".")[-1]}) in done:
                continue
            t0 = time.perf_counter()
            r = run_subprocess(module, spec, timeout=timeout, mem_cap_gb=args.mem_cap_gb)
            r.setdefault("bench", module.split(".")[-1])
            r["case_wall_s"] = round(time.perf_counter() - t0, 1)
            if not spec.get("reference"):
                results.append(r)
                fh.write(json.dumps(r, default=float) + "\n")
                fh.flush()
            short = {k: r.get(k) for k in ("impl", "measure", "model", "n", "status", "seconds", "max_abs_err", "note")
                     if r.get(k) not in (None, "")}
            print(f"[{time.perf_counter() - t_all:6.0f}s] {module.split('.')[-1]} {short}", flush=True)
    info["loadavg_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    info["total_s"] = round(time.perf_counter() - t_all)
    with jsonl.open("a") as fh:
        fh.write(json.dumps({"bench": "machine", **info}) + "\n")
    if args.scale:
        from .scale import write_scale_report

        latest = {_spec_key(r): r for r in earlier + results}
        write_scale_report(list(latest.values()), info)
        return
    write_report(results, info)


if __name__ == "__main__":
    main()
