"""Write ``results.csv`` (one row per case) and ``README.md`` (machine, tables, targets) from results."""

from __future__ import annotations

import csv

from ._common import REPORT_DIR

COLS = ["bench", "measure", "kind", "impl", "data", "model", "n", "d", "layers", "offset", "scale", "status", "seconds",
        "ratio_vs_homoscope", "peak_mb", "input_mb", "max_abs_err", "flops", "bound_route", "route", "flops_done", "gflops",
        "matmul_f32_gflops", "matmul_f64_gflops", "roofline_pct", "units_per_s", "bare_units_per_s",
        "unsorted_units_per_s", "overhead_pct", "bucketing_speedup", "update_s", "compute_s", "us_per_row",
        "linear_cka", "debiased_cka", "cca_rho", "threads", "case_wall_s", "note"]


def _f(x, digits=3):
    if x is None or x == "":
        return ""
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.1e}"
        return f"{x:.{digits}g}"
    return str(x)


def _key(r):
    return (r.get("measure"), r.get("n"), r.get("offset", 0.0), r.get("scale", 1.0), r.get("data"))


def add_ratios(results: list[dict]) -> None:
    ours = {_key(r): r for r in results if r.get("impl") == "homoscope" and r.get("status") == "ok"}
    for r in results:
        h = ours.get(_key(r))
        if r.get("bench") == "measures" and h and r.get("status") == "ok":
            r["ratio_vs_homoscope"] = r["seconds"] / h["seconds"]


def targets(results: list[dict]) -> list[tuple[str, str, str]]:
    """(target, held / missed / not measured, numbers)."""
    out = []
    ok = [r for r in results if r.get("status") == "ok"]
    ms = [r for r in ok if r.get("bench") == "measures" and not r.get("offset") and r.get("scale", 1.0) == 1.0
          and r.get("data") != "demo"]
    ours = [r for r in ms if r["impl"] == "homoscope"]

    def verdict(cond):
        return "held" if cond else "missed"

    cka = [r for r in ours if r["measure"] in ("linear_cka", "debiased_cka")]
    if cka:
        worst = min(cka, key=lambda r: r["roofline_pct"])
        out.append(("exact linear/debiased CKA >= 70% of the roofline (cheaper exact route at the float32 matmul rate)",
                    verdict(worst["roofline_pct"] >= 70),
                    "; ".join(f"{r['measure']} n={r['n']}: {r['roofline_pct']:.0f}% ({r.get('route')})" for r in cka)))
    f64_peers = ("ckatorch", "numpy-f64")
    for measure, factor, what, allowed, nmax in (
        ("linear_cka", 3.0, "biased linear CKA >= 3x the fastest peer", None, None),
        ("debiased_cka", 1.0, "debiased CKA at least as fast as pytorch-cka (n=1,024, 4,096)", ("pytorch-cka",), 4096),
        ("debiased_cka", 5.0, "debiased CKA >= 5x the fastest float64-accurate peer", f64_peers, None),
        ("minibatch_cka", 1.0, "minibatch_cka at least as fast as pytorch-cka (batch 1,024)", ("pytorch-cka",), None),
    ):
        rows = []
        for r in ours:
            if r["measure"] != measure or (nmax and r["n"] > nmax):
                continue
            peers = [p for p in ms if p["measure"] == measure and p["n"] == r["n"]
                     and not p["impl"].startswith("homoscope") and (allowed is None or p["impl"] in allowed)]
            if peers:
                best = min(peers, key=lambda p: p["seconds"])
                rows.append((r["n"], best["impl"], best["seconds"] / r["seconds"]))
        if rows:
            out.append((what, verdict(all(x[2] >= factor for x in rows)),
                        "; ".join(f"n={n}: {imp} / homoscope = {x:.2f}x" for n, imp, x in rows)))
        else:
            out.append((what, "not measured", "no peer result"))
    errs = {impl: [r for r in ok if r.get("bench") == "measures" and r.get("max_abs_err") is not None
                   and r["impl"] == impl] for impl in ("homoscope", "homoscope-f64")}
    acc, acc64 = errs["homoscope"], errs["homoscope-f64"]
    for rows, bound, label, detail in (
        (acc, 1e-6, "default mode: max abs error vs float64 <= 1e-6 for any offset/scale",
         lambda: f" (offsets {sorted({r.get('offset', 0.0) for r in acc})}, "
                 f"scales {sorted({r.get('scale', 1.0) for r in acc})})"),
        (acc64, 1e-12, "float64 mode: max abs error <= 1e-12",
         lambda: "; " + "; ".join(f"{r['measure']} n={r['n']}: {r['seconds']:.2f} s" for r in acc64)),
    ):
        if rows:
            worst = max(r["max_abs_err"] for r in rows)
            out.append((label, verdict(worst <= bound), f"worst {worst:.1e} over {len(rows)} cases" + detail()))
    pk = {(r.get("n"), r.get("offset", 0.0), r.get("scale", 1.0)): r for r in ok if r.get("impl") == "pytorch-cka"
          and r.get("measure") == "debiased_cka" and r.get("max_abs_err") is not None}
    hd = {(r.get("n"), r.get("offset", 0.0), r.get("scale", 1.0)): r for r in acc if r["measure"] == "debiased_cka"}
    pairs = [(k, pk[k]["max_abs_err"] / max(hd[k]["max_abs_err"], 1e-17)) for k in pk if k in hd]
    if pairs:
        out.append(("debiased CKA >= 100x more accurate than pytorch-cka", verdict(all(x >= 100 for _, x in pairs)),
                    "; ".join(f"n={k[0]} offset={k[1]:g} scale={k[2]:g}: err pytorch-cka {pk[k]['max_abs_err']:.1e} vs homoscope "
                              f"{hd[k]['max_abs_err']:.1e} ({x:.1e}x)" for k, x in pairs)))
    for n, limit in ((16384, 30), (65536, 180)):
        rows = [r for r in ours if r["n"] == n and r["measure"] in ("linear_cka", "debiased_cka")]
        failed = [r for r in results if r.get("impl") == "homoscope" and r.get("n") == n and r.get("status") != "ok"]
        if rows or failed:
            good = all(r["seconds"] < limit and r["peak_mb"] < 8192 for r in rows) and not failed
            out.append((f"n={n:,} exact in < {limit} s under 8 GB", verdict(good),
                        "; ".join([f"{r['measure']}: {r['seconds']:.1f} s, {r['peak_mb']} MB" for r in rows]
                                  + [f"{r['measure']}: {r['status']} ({r.get('note', '')})" for r in failed])))
        else:
            out.append((f"n={n:,} exact in < {limit} s under 8 GB", "not measured", "not run in this mode"))
    ex = [r for r in ok if r.get("bench") == "extraction"]
    if ex:
        out.append(("extraction overhead <= 5% over bare forward", verdict(all(r["overhead_pct"] <= 5 for r in ex)),
                    "; ".join(f"{r['model']}: {r['overhead_pct']:+.1f}% (time outside the model forward: "
                              f"{r.get('outside_forward_pct', float('nan')):.1f}%)" for r in ex)))
        out.append(("bucketing >= 1.5x over unsorted", verdict(all(r["bucketing_speedup"] >= 1.5 for r in ex)),
                    "; ".join(f"{r['model']}: {r['bucketing_speedup']:.2f}x (padded tokens "
                              f"{r['padded_tokens_unsorted']} vs {r['padded_tokens_sorted']})" for r in ex)))
    st = sorted([r for r in ok if r.get("bench") == "streaming"], key=lambda r: r["n"])
    if len(st) >= 2:
        a, b = st[0], st[-1]
        out.append((f"streaming peak memory at n={b['n']:.0e} within 10% of n={a['n']:.0e}",
                    verdict(b["peak_mb"] <= 1.1 * a["peak_mb"]), f"{a['peak_mb']} MB vs {b['peak_mb']} MB"))
        out.append(("streaming time linear in n (update time per row within 25%)",
                    verdict(abs(b["us_per_row"] / a["us_per_row"] - 1) <= 0.25),
                    f"{a['us_per_row']:.0f} vs {b['us_per_row']:.0f} us/row"))
    return out


def write_report(results: list[dict], info: dict | None) -> None:
    add_ratios(results)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    with (REPORT_DIR / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, COLS, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow({k: r.get(k, "") for k in COLS})
    info = info or {}
    lines = ["# homoscope benchmarks", ""]
    commands = info.get("commands") or [info.get("command") or "python -m benchmarks"]
    lines += [f"Mode: `{info.get('mode', '?')}`; run as " + ", then ".join(f"`{c}`" for c in commands)
              + f"; the last command took {info.get('total_s', '?')} s.", "",
              "## Machine", "",
              f"- CPU: {info.get('cpu')}, {info.get('cores')} cores, {info.get('mem_gb')} GB RAM, no GPU"
              if not info.get("cuda") else f"- GPU: {info.get('cuda')}",
              f"- Python {info.get('python')}, torch {info.get('torch')}, {info.get('torch_threads')} threads",
              f"- load average (1, 5, 15 min) at start {info.get('loadavg')}, at end {info.get('loadavg_end')}"
              + (": the CPU was shared with other work, so absolute times are inflated and noisy; the ratios "
                 "come from runs in the same script, minutes apart, and are the numbers to read."
                 if max(info.get("loadavg") or [0]) > (info.get("cores") or 1) else
                 " (the benchmark itself included)."), ""]
    lines += ["## Targets", "", "| target | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {t} | **{v}** | {x} |" for t, v, x in targets(results)]
    ms = [r for r in results if r.get("bench") == "measures"]
    if ms:
        lines += ["", "## Measures (13 x 13 layers, d = 768, synthetic correlated stacks)", "",
                  "ratio = peer time / homoscope time (> 1: homoscope faster). err = max abs error against the "
                  "float64 reference of the same data. GFLOP/s = FLOP lower bound of the cheaper exact route / "
                  "time; roofline = that bound at the float32 matmul rate of the dominant shape, measured in the "
                  "same process, divided by the time.", "",
                  "| measure | data | n | offset | scale | impl | route | status | time s | ratio | peak MB | err | GFLOP/s | f32 mm GFLOP/s | f64 mm GFLOP/s | roofline % | note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(ms, key=lambda r: (r.get("measure"), r.get("offset", 0.0), r.get("scale", 1.0), r.get("n"),
                                           r.get("impl") != "homoscope", r.get("impl"))):
            lines.append("| " + " | ".join(_f(r.get(k)) for k in ("measure", "data", "n", "offset", "scale", "impl", "route",
                                                                "status", "seconds",
                                                                "ratio_vs_homoscope", "peak_mb", "max_abs_err",
                                                                "gflops", "matmul_f32_gflops", "matmul_f64_gflops",
                                                                "roofline_pct", "note")) + " |")
    ex = [r for r in results if r.get("bench") == "extraction"]
    if ex:
        lines += ["", "## Extraction (bbc sentences, CPU float32, batch_tokens 8192, max_length 128)", "",
                  "| model | n | status | homoscope units/s | bare forward units/s | unsorted units/s | overhead % | bucketing x | peak MB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in ex:
            lines.append("| " + " | ".join(_f(r.get(k)) for k in ("model", "n", "status", "units_per_s", "bare_units_per_s",
                                                                "unsorted_units_per_s", "overhead_pct",
                                                                "bucketing_speedup", "peak_mb")) + " |")
    st = [r for r in results if r.get("bench") == "streaming"]
    if st:
        lines += ["", "## Streaming (CrossMoments, 2 x 2 layers of width 768, chunks of 8,192 rows, float64 sums)", "",
                  "| n | status | update s | us/row | compute s | peak MB | err vs float64 | linear_cka | debiased_cka | cca_rho |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(st, key=lambda r: r.get("n", 0)):
            lines.append("| " + " | ".join(_f(r.get(k), 6 if k in ("linear_cka", "debiased_cka", "cca_rho") else 3)
                                           for k in ("n", "status", "update_s", "us_per_row", "compute_s",
                                                     "peak_mb", "max_abs_err", "linear_cka", "debiased_cka",
                                                     "cca_rho")) + " |")
    notes = REPORT_DIR / "NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    (REPORT_DIR / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {REPORT_DIR / 'README.md'} and {REPORT_DIR / 'results.csv'}")
