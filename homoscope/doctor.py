"""``homoscope doctor``: what this installation is, and whether it works.

:func:`diagnose` gathers a report as a dict: library versions, the device a study would use, the
homoscope cache (location, size on disk, free space, writable), the representation store (entries,
incomplete entries, leftover temporary files), the hub cache, and the packaged offline models
(installed, assembled, size). With ``load=True`` every assembled packaged model is loaded and run on
two short texts through the real probe runner, which checks that it returns ``blocks + 1`` finite
layers of the registered width. :func:`format_report` turns the dict into text; :func:`main` is the
command (exit status 1 when a check fails).

Nothing here downloads anything or installs a model.
"""
from __future__ import annotations

import gc
import json
import os
import re
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

__all__ = ["check_packaged_model", "diagnose", "format_report", "main"]

PROBE_TEXTS = ("The cat sat on the mat, and then it slept.", "Prices went up in March.")

# Distributions whose versions shape the numbers or the files, shown beside the required ones.
_SHOWN = ("safetensors", "tokenizers", "huggingface-hub", "accelerate", "pyarrow", "matplotlib", "gguf",
          "onnx", "onnxruntime", "hypothesis", "ray")


def _check(report: dict, name: str, ok: bool, detail: str = "") -> None:
    report["checks"].append({"name": name, "ok": bool(ok), "detail": detail})


def _folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (links not followed); 0 if it does not exist."""
    total = 0
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _requirement_names() -> list[str]:
    try:
        reqs = metadata.requires("homoscope") or []
    except metadata.PackageNotFoundError:
        reqs = []
    names = []
    for r in reqs:
        if "extra ==" in r:
            continue
        m = re.match(r"[A-Za-z0-9_.-]+", r)
        if m:
            names.append(m.group(0))
    return names


def _versions(report: dict) -> None:
    import platform

    from . import __version__

    versions = {"homoscope": __version__, "python": platform.python_version(), "platform": platform.platform()}
    missing = []
    for dist in [*_requirement_names(), *_SHOWN]:
        if dist in versions:
            continue
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist not in _SHOWN:
                missing.append(dist)
            else:
                versions[dist] = None
    report["versions"] = versions
    _check(report, "python >= 3.11", sys.version_info >= (3, 11), platform.python_version())
    _check(report, "required packages installed", not missing,
           "all present" if not missing else f"missing: {', '.join(missing)}; reinstall homoscope")


def _device(report: dict, device: str) -> object:
    import torch

    from .study import best_device

    info: dict = {"requested": device, "cpu_threads": torch.get_num_threads(),
                  "cuda_available": torch.cuda.is_available(), "cuda_version": torch.version.cuda, "gpus": []}
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"index": i, "name": p.name, "memory_bytes": int(p.total_memory)})
    mps = getattr(torch.backends, "mps", None)
    info["mps_available"] = bool(mps is not None and mps.is_available())
    try:
        dev = best_device(device)
        info["selected"] = str(dev)
    except (RuntimeError, ValueError) as err:
        info["selected"] = None
        report["device"] = info
        _check(report, "device", False, f"device={device!r} is not usable: {err}")
        return None
    report["device"] = info
    # the measures' float64 path on that device: CKA of a matrix with itself is 1
    try:
        from .measures import compute

        g = torch.Generator().manual_seed(0)
        X = torch.randn(1, 16, 8, generator=g, dtype=torch.float64).to(dev)
        v = float(compute("linear_cka", X, X).cpu()[0, 0])
        ok = abs(v - 1.0) < 1e-9
        _check(report, f"float64 measures on {dev}", ok, f"linear_cka(X, X) = {v:.12f}")
    except Exception as err:  # noqa: BLE001 - any failure here is the finding
        _check(report, f"float64 measures on {dev}", False, f"{type(err).__name__}: {err}")
    return dev


def _cache(report: dict) -> Path | None:
    from ._paths import homoscope_home
    from .study import check_writable

    try:
        home = homoscope_home()
    except (OSError, ValueError) as err:
        report["cache"] = {"path": os.environ.get("HOMOSCOPE_HOME"), "error": str(err)}
        _check(report, "cache folder", False, str(err))
        return None
    parts = {}
    if home.is_dir():
        for child in sorted(home.iterdir()):
            parts[child.name] = _folder_size(child) if child.is_dir() else child.stat().st_size
    usage = shutil.disk_usage(home)
    report["cache"] = {
        "path": str(home),
        "from_env": bool(os.environ.get("HOMOSCOPE_HOME")),
        "size_bytes": sum(parts.values()),
        "parts": parts,
        "free_bytes": int(usage.free),
    }
    try:
        check_writable(home, "HOMOSCOPE_HOME", "point HOMOSCOPE_HOME at a folder you can write")
        _check(report, "cache folder writable", True, str(home))
    except ValueError as err:
        _check(report, "cache folder writable", False, str(err))
    return home


def _store(report: dict, home: Path | None) -> None:
    root = home / "representations" if home is not None else None
    info: dict = {"path": str(root) if root else None, "entries": 0, "size_bytes": 0, "incomplete": 0,
                  "temporary": 0}
    if root is not None and root.is_dir():
        for p in root.iterdir():
            if p.name.endswith(".tmp"):
                info["temporary"] += 1
            elif p.suffix == ".safetensors":
                record = p.with_suffix(".json")
                try:
                    rec = json.loads(record.read_text())
                    complete = rec.get("size") == p.stat().st_size
                except (OSError, ValueError):
                    complete = False
                info["entries" if complete else "incomplete"] += 1
        info["size_bytes"] = _folder_size(root)
    report["store"] = info


def _hub(report: dict) -> None:
    from .models import hub_offline

    try:
        from huggingface_hub import constants

        cache = str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - optional information
        cache = None
    report["hub"] = {"cache": cache, "offline": hub_offline()}


def check_packaged_model(name: str, device=None) -> dict:
    """Load packaged model ``name`` and run it on two short texts through the probe runner.

    Checks that the stack has ``blocks + 1`` layers and the registered width, and that every value
    is finite (the runner raises otherwise). Returns ``{'ok', 'detail', 'seconds'}``; never raises for
    a broken model: the error is the detail.
    """
    import torch

    from .extract import extract
    from .models import PACKAGED, load_model

    t0 = time.perf_counter()
    entry = PACKAGED[name]
    loaded = None
    try:
        loaded = load_model(name, device=device, progress=False)
        stack = extract(loaded, list(PROBE_TEXTS), max_length=32, batch_tokens=256, progress=False)
        problems = []
        if loaded.info.blocks != entry.blocks:
            problems.append(f"has {loaded.info.blocks} blocks, the registry says {entry.blocks}")
        if stack.shape[0] != loaded.info.blocks + 1:
            problems.append(f"returned {stack.shape[0]} hidden states, expected blocks + 1 = {loaded.info.blocks + 1}")
        if stack.shape[2] != entry.width:
            problems.append(f"has width {stack.shape[2]}, the registry says {entry.width}")
        ok = not problems
        detail = ("; ".join(problems) + f"; reassemble it with `homoscope models install {name} --force`") \
            if problems else f"{stack.shape[0]} layers x width {stack.shape[2]}, finite, on {loaded.device}"
    except Exception as err:  # noqa: BLE001 - a broken model is the finding, not a crash
        ok = False
        detail = (f"does not load or run: {type(err).__name__}: {str(err)[:300]}; reassemble it with "
                  f"`homoscope models install {name} --force`")
    finally:
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"ok": ok, "detail": detail, "seconds": round(time.perf_counter() - t0, 2)}


def _models(report: dict, load: bool, device) -> None:
    from .models import packaged_status

    rows = []
    for r in packaged_status():
        row = {k: r[k] for k in ("name", "installed", "assembled", "architecture", "blocks", "width", "size_bytes",
                                 "path")}
        if not r["assembled"]:
            row["status"] = "not installed" if not r["installed"] else "not assembled"
            row["detail"] = f"install with `homoscope models install {r['name']}`"
        elif not load:
            row["status"], row["detail"] = "not checked", "--no-load"
        else:
            res = check_packaged_model(r["name"], device=device)
            row["status"] = "ok" if res["ok"] else "failed"
            row["detail"], row["seconds"] = res["detail"], res["seconds"]
            _check(report, f"model {r['name']} loads and runs", res["ok"], res["detail"])
        rows.append(row)
    report["models"] = rows


def diagnose(load: bool = True, device: str = "auto") -> dict:
    """Gather the doctor's report.

    Args:
        load: load and run every assembled packaged model (False: only list them).
        device: ``auto`` (cuda, then mps, then cpu) or a torch device string, as for a study.

    Returns:
        dict with ``versions``, ``device``, ``cache``, ``store``, ``hub``, ``models`` (one row per
        packaged model with ``status``: ok, failed, not checked, not installed, not assembled),
        ``checks`` (``{'name', 'ok', 'detail'}``) and ``ok`` (every check passed).
    """
    report: dict = {"checks": []}
    _versions(report)
    dev = _device(report, device)
    home = _cache(report)
    _store(report, home)
    _hub(report)
    _models(report, load, dev)
    report["ok"] = all(c["ok"] for c in report["checks"])
    return report


def format_report(report: dict) -> str:
    """The report of :func:`diagnose` as plain text, one fact a line."""
    lines = ["homoscope doctor", "", "versions"]
    for k, v in report.get("versions", {}).items():
        lines.append(f"  {k:<16} {v if v is not None else '(not installed)'}")
    d = report.get("device", {})
    lines += ["", "device", f"  {'selected':<16} {d.get('selected')}"]
    if d.get("cuda_available"):
        gpus = ", ".join(f"{g['index']}: {g['name']} ({human_bytes(g['memory_bytes'])})" for g in d.get("gpus", []))
        lines.append(f"  {'cuda':<16} available, CUDA {d.get('cuda_version')}; {gpus}")
    else:
        lines.append(f"  {'cuda':<16} not available")
    lines.append(f"  {'mps':<16} {'available' if d.get('mps_available') else 'not available'}")
    lines.append(f"  {'cpu threads':<16} {d.get('cpu_threads')}")
    c = report.get("cache", {})
    lines += ["", "cache"]
    if "error" in c:
        lines.append(f"  {'location':<16} {c.get('path')}: {c['error']}")
    else:
        src = "HOMOSCOPE_HOME" if c.get("from_env") else "default; set HOMOSCOPE_HOME to move it"
        lines.append(f"  {'location':<16} {c.get('path')} ({src})")
        parts = ", ".join(f"{k} {human_bytes(v)}" for k, v in c.get("parts", {}).items())
        lines.append(f"  {'size':<16} {human_bytes(c.get('size_bytes', 0))}" + (f" ({parts})" if parts else ""))
        lines.append(f"  {'free space':<16} {human_bytes(c.get('free_bytes', 0))}")
    s = report.get("store", {})
    if s.get("path"):
        extra = []
        if s.get("incomplete"):
            extra.append(f"{s['incomplete']} incomplete (recomputed when needed)")
        if s.get("temporary"):
            extra.append(f"{s['temporary']} temporary files left by interrupted runs (safe to delete)")
        lines.append(f"  {'store':<16} {s['entries']} entries, {human_bytes(s.get('size_bytes', 0))}"
                     + (f"; {', '.join(extra)}" if extra else ""))
    h = report.get("hub", {})
    lines.append(f"  {'hub cache':<16} {h.get('cache')} (offline: {'yes' if h.get('offline') else 'no'})")
    lines += ["", "packaged models"]
    wide = max([14, *(len(m["name"]) for m in report.get("models", []))])
    for m in report.get("models", []):
        size = human_bytes(m["size_bytes"]) if m.get("size_bytes") else "-"
        took = f" [{m['seconds']:.1f} s]" if m.get("seconds") is not None else ""
        lines.append(f"  {m['name']:<{wide}} {m['status']:<14} {size:>10}  {m.get('detail', '')}{took}")
    lines += ["", "checks"]
    for ch in report.get("checks", []):
        lines.append(f"  [{'ok' if ch['ok'] else 'FAIL':<4}] {ch['name']}: {ch['detail']}")
    failed = [ch for ch in report.get("checks", []) if not ch["ok"]]
    n = len(report.get("checks", []))
    lines += ["", f"{len(failed)} of {n} checks failed" if failed else f"all {n} checks passed"]
    return "\n".join(lines)


def main(load: bool = True, device: str = "auto", as_json: bool = False, stream=None) -> int:
    """Run the doctor and print its report; returns 0 when every check passes, else 1."""
    stream = stream or sys.stdout
    report = diagnose(load=load, device=device)
    if as_json:
        print(json.dumps(report, indent=2, default=str), file=stream)
    else:
        print(format_report(report), file=stream)
    return 0 if report["ok"] else 1
