"""A study end to end: :func:`run_study` loads the corpus, extracts each model in turn (reusing stored
representations), scores every model pair with every measure at all layer pairs, and writes the
tidy results frame, figures, ``manifest.json`` and ``report.md`` into ``out``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import __version__
from .._spelling import typed
from ..extract import RepresentationStore
from ..report.folder import ResultsFolder
from .extraction import RANDOM_INIT_SUFFIX, _free, _load, extract_model, random_init_seed
from .options import EXECUTION_OPTIONS, ROWS_CALLED, Study, StudyWriteError, _os_reason, best_device, check_writable
from .scoring import check_rows_above_widths, model_pairs, score_pairs, warn_layer_blocks

class Representations(Mapping):
    """``{model name: [L, n, d] tensor}``, each read from the store when asked for (nothing is held).

    ``.stacks`` holds the :class:`~.shards.ShardedStack` s themselves.
    """

    def __init__(self, stacks: dict):
        self.stacks = dict(stacks)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.stacks[name].load()

    def __iter__(self):
        return iter(self.stacks)

    def __len__(self) -> int:
        return len(self.stacks)


@dataclass
class StudyResult:
    """What a study produced: the tidy frame, the output folder, the manifest and the files.

    ``representations`` and ``controls`` map model names to their stacks (read from the store on access).
    """

    frame: pd.DataFrame
    out: Path
    manifest: dict
    files: dict
    representations: Mapping = field(default_factory=dict, repr=False)
    rows: pd.DataFrame | None = field(default=None, repr=False)
    controls: Mapping = field(default_factory=dict, repr=False)
    agreement: object = field(default=None, repr=False)


def versions() -> dict:
    """Versions of Python and the libraries that shape the numbers."""
    import numpy
    import scipy
    import sklearn
    import transformers

    return {
        "homoscope": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "pandas": pd.__version__,
        "platform": platform.platform(),
    }



def run_study(
    study: Study,
    *,
    progress: bool = True,
    commands: list[str] | None = None,
    loaded_models: dict | None = None,
    log=print,
) -> StudyResult:
    """Run a study end to end and write its outputs: the stages in order, over the store.

    Args:
        study: the configuration (validated here).
        progress: tqdm bars for extraction and measures.
        commands: shell commands that reproduce the study (for the report).
        loaded_models: optional ``{name: LoadedModel}`` used instead of loading the spec
            (in-memory models, tests).
        log: where one-line progress messages go (``print`` by default; None = silent).

    Returns a :class:`StudyResult`. Raises ValueError for arguments of the wrong kind (``study`` not a
    :class:`Study`, ``loaded_models`` not a mapping of loaded models) and for bad configuration, naming each
    option as the user typed it (see :meth:`Study.validate`; an output or store folder that cannot be
    written, a model spec that resolves to nothing, a model folder with a damaged file, a model that needs
    code of its own without ``trust_remote_code`` and a CCA measure with no more rows than a model's width,
    where its config tells the width, are found
    before any model loads; a tokenizer whose special tokens fill ``max_length`` and ``pooling='cls'``
    without a CLS token before that model's extraction), the corpus and model loaders' errors, and
    the measures' errors; :class:`StudyWriteError` when writing the store or the outputs fails
    (disk full, permissions), keeping what was written before.
    """
    log = log or (lambda *_a, **_k: None)
    t_all = time.perf_counter()
    with warnings.catch_warnings(record=True) as wlist:
        warnings.simplefilter("always")
        folder, sources = _check(study, loaded_models)
        with folder:  # the output folder is this run's until its outputs are swapped in
            ctx = _prepare(study, folder, sources, loaded_models, log)
            ext, frame = _stages(study, ctx, loaded_models, progress, log)
            agreement = _run_agreement(study, Representations(ext.stacks), ctx.corpus, log)
            if agreement is not None:
                ctx.timings["agreement"] = agreement.meta.get("seconds", {}).get("total", float("nan"))
            caught = [f"{w.category.__name__}: {w.message}" for w in wlist]
            for w in sorted(set(caught)):  # recorded above for the manifest and the report; said here too
                log(w)
            manifest = _manifest(study, ctx, ext, agreement, caught, commands)
            files = _write(study, ctx, ext, frame, manifest, agreement, progress, t_all)
    return StudyResult(frame=frame, out=ctx.out, manifest=manifest, files=files,
                       representations=Representations(ext.stacks), rows=ext.rows_table,
                       controls=Representations(ext.controls), agreement=agreement)


def _stages(study: Study, ctx: "_Context", loaded_models: dict | None, progress: bool, log):
    """Extraction and scoring, here or on a Ray cluster (``executor``): ``(Extracted, frame)``."""
    if study.executor == "ray":
        from .distributed import run_on_ray

        with _explained(study):
            return run_on_ray(study, ctx, loaded_models, progress, log)
    ext = extract_all(study, ctx, loaded_models, progress, log)
    # again with the rows and shapes as extracted (words some model gives no token are dropped)
    shapes = {name: (s.layers, s.width) for name, s in ext.stacks.items()}
    _check_plan(study, next(iter(ext.stacks.values())).n, shapes)
    return ext, _score_all(study, ctx, ext, progress, log)


def _score_all(study: Study, ctx: "_Context", ext: "Extracted", progress: bool, log) -> pd.DataFrame:
    """Stage 2 over the extracted stacks, with the study's options."""
    t0 = time.perf_counter()
    names = [n for n, _ in study.model_specs()]
    with _explained(study):
        frame = score_pairs(
            ext.stacks, model_pairs(names, study.pairs), list(study.measures), unit=study.unit,
            permutations=study.permutations, bootstrap=study.bootstrap, groups=ext.groups, seed=study.seed,
            device=ctx.device, progress=progress, memory_mb=study.memory_mb, pairwise_rows=study.pairwise_rows,
            bootstrap_groups=study.bootstrap_groups,
            controls={k[: -len(RANDOM_INIT_SUFFIX)]: v for k, v in ext.controls.items()} or None, store=ctx.store,
            log=log,
        )
    ctx.timings["measures"] = time.perf_counter() - t0
    return frame


@contextlib.contextmanager
def _explained(study: Study):
    """Scoring's constant-layer error explained where the pooling makes one likely."""
    try:
        yield
    except ValueError as err:
        constant = "zero variance" in str(err) or "no variance above" in str(err)  # or only rounding between rows
        if constant and study.pooling in ("cls", "first", "last"):
            raise ValueError(f"{err}. With {typed('pooling', study.pooling)} a layer can hold the same row for every "
                             "text (layer 0 is the embedding of the same special token at the same position): use "
                             f"{typed('pooling', 'mean')}") from None
        raise


@dataclass
class _Context:
    """What every stage reads: the output folder (and its lock), corpus, store, device, word plan, timings."""

    out: Path
    corpus: object
    store: RepresentationStore
    device: torch.device
    folder: ResultsFolder
    plan: object = None
    timings: dict = field(default_factory=dict)


@dataclass
class Extracted:
    """The extraction stage's result: stacks by model name (rows aligned across models), controls,
    records, the row table and manifest entry of word and token units, bootstrap groups per row."""

    stacks: dict
    controls: dict
    records: list
    control_records: list
    rows_table: pd.DataFrame | None = None
    rows_meta: dict | None = None
    groups: list | None = None


def _check_arguments(study: Study, loaded_models: dict | None) -> None:
    """Raise a ValueError naming the argument of :func:`run_study` that is of the wrong kind: ``study`` not a
    :class:`Study`, ``loaded_models`` not a mapping ``{name: LoadedModel}``."""
    from ..extract.runner import check_loaded
    from ..measures._validate import describe

    if not isinstance(study, Study):
        raise ValueError(f"study must be a Study (Study(models=[...]) or Study.from_toml(path)); got {describe(study)}")
    if loaded_models is None:
        return
    if not isinstance(loaded_models, Mapping):
        raise ValueError(f"loaded_models must be a mapping {{name: LoadedModel}}; got {describe(loaded_models)}")
    for name, loaded in loaded_models.items():
        try:
            check_loaded(loaded)
        except ValueError as err:
            raise ValueError(f"loaded_models[{name!r}]: {err}") from None


def _check(study: Study, loaded_models: dict | None) -> tuple[ResultsFolder, dict]:
    """Validate, check the output folder and the specs before any model runs: the folder (not yet held) and
    the resolved sources of the models (:func:`_resolve_specs`).

    Fails before hours of extraction, not after: a folder that cannot be written or replaced whole, a spec
    that names nothing. The output folder itself is only created when the run's outputs are swapped in.
    """
    _check_arguments(study, loaded_models)
    study.validate()
    out = Path(study.out)
    check_writable(out, "out", f"give another output folder as {typed('out')}")  # a read-only one is kept
    folder = ResultsFolder(out, option=typed("out"))
    folder.check()
    if study.store is not None:
        store = Path(os.path.realpath(study.store))
        if store == folder.path or folder.path in store.parents:
            raise ValueError(f"{typed('store', study.store)} lies inside {typed('out', study.out)}: a run replaces its "
                             f"results folder whole, so give the store a folder of its own")
    return folder, _resolve_specs(study, loaded_models)


def _prepare(study: Study, folder: ResultsFolder, sources: dict, loaded_models: dict | None, log) -> _Context:
    """Load the corpus, open the store, check the plan against what is known of the models (with the
    output folder held)."""
    from ..corpora import load_corpus

    out = Path(study.out)
    t0 = time.perf_counter()
    corpus = load_corpus(study.corpus, sentences=study.sentences or None, seed=study.seed, text_column=study.text_column,
                         label_column=study.label_column, doc_column=study.doc_column)
    timings = {"load_corpus": time.perf_counter() - t0}
    log(f"corpus: {corpus.source}, {len(corpus)} texts")
    _agreement_gap(study, corpus)  # agreement='on' that cannot run fails here, before any model
    store_hint = f"give another folder as {typed('store')}"
    if study.store is not None:
        check_writable(Path(study.store), "store", store_hint)
    try:
        store = RepresentationStore(study.store)
    except OSError as err:
        raise ValueError(f"store={study.store!r} cannot be created: {_os_reason(err)}; {store_hint}") from None
    check_writable(store.root, "store", store_hint)
    ctx = _Context(out, corpus, store, best_device(study.device), folder, timings=timings)
    if study.unit == "word":
        from ..extract.words import plan_words

        t0 = time.perf_counter()
        ctx.plan = plan_words(corpus.texts, punctuation=study.punctuation, max_rows=study.max_rows, seed=study.seed)
        timings["plan_words"] = time.perf_counter() - t0
        sampled = f", {len(ctx.plan.rows)} sampled ({typed('max_rows', study.max_rows)})" if ctx.plan.sampled else ""
        log(f"words: {ctx.plan.total} in {len(corpus)} texts ({typed('punctuation', study.punctuation)}){sampled}")
    rows = {"sentence": len(corpus), "word": len(ctx.plan.rows) if ctx.plan is not None else None}.get(study.unit)
    _check_plan(study, rows, _known_shapes(study, sources, loaded_models))
    return ctx


def _known_shapes(study: Study, sources: dict, loaded_models: dict | None) -> dict:
    """``{name: (layers, width)}`` of the models known before any loads: those given loaded, and those whose
    config can be read here (:func:`~homoscope.models.config_shape`)."""
    from ..models import config_shape

    shapes = {}
    for name, _spec in study.model_specs():
        info = getattr((loaded_models or {}).get(name), "info", None)
        shape = (getattr(info, "blocks", None), getattr(info, "width", None))
        if None in shape:
            shape = config_shape(sources[name]) if name in sources else None
        if shape is not None:
            shapes[name] = (shape[0] + 1, shape[1])  # blocks + the embedding layer
    return shapes


def _check_plan(study: Study, rows: int | None, shapes: dict) -> None:
    """What the scoring will need, checked before the time is spent: the widths of the models known so far
    against the rows (:func:`~.scoring.check_rows_above_widths`, raises ValueError) and, where the bootstrap
    streams, the layer blocks of ``memory_mb`` (:func:`~.scoring.warn_layer_blocks`, a warning). ``rows``:
    the study's rows, None where not known yet (token rows)."""
    from ..measures import STREAMING_MEASURES

    if rows is None:
        return
    what = ROWS_CALLED[study.unit]
    check_rows_above_widths(study.measures, rows, {name: d for name, (_, d) in shapes.items()}, what)
    if study.bootstrap and rows > study.pairwise_rows and any(m in STREAMING_MEASURES for m in study.measures):
        pairs = model_pairs([name for name, _ in study.model_specs()], study.pairs)
        warn_layer_blocks(shapes, pairs, study.memory_mb, study.bootstrap_groups)


def extract_all(study: Study, ctx: _Context, loaded_models: dict | None, progress: bool, log) -> Extracted:
    """Stage: every model (and its random-init control) into the store, shard by shard; rows aligned."""
    ext = Extracted({}, {}, [], [], groups=ctx.corpus.doc_ids)
    what = ROWS_CALLED[study.unit]
    for name, spec in study.model_specs():
        given = (loaded_models or {}).get(name)
        if study.random_init and given is None:
            given = _load(study, name, spec, ctx.device)
        stack, rec = extract_model(study, name, spec, ctx.corpus, ctx.store, ctx.device, progress, loaded=given,
                                   plan=ctx.plan, log=log)
        if study.random_init:
            _extract_control(study, ctx, ext, name, spec, given, progress, log)
            if name not in (loaded_models or {}):
                del given
                _free(ctx.device)
        if ctx.plan is None and study.unit == "token":
            ctx.plan = rec["plan"]
        ext.stacks[name] = stack
        ext.records.append(rec)
        ctx.timings[f"extract/{name}"] = rec["seconds"]
        report_model(study, ctx, stack, rec, log)
    if ctx.plan is not None:
        _align_rows(ctx.plan, ctx.corpus, ext)
        if ext.rows_meta["dropped_words"]:
            log(f"dropped {ext.rows_meta['dropped_words']} words that some model gives no token; "
                f"n = {ext.rows_meta['n']} {what} for every model")
    return ext


def report_model(study: Study, ctx: _Context, stack, rec: dict, log) -> None:
    """Say what one model's extraction gave (layers, rows, width, reuse, losses) and warn of a cut corpus."""
    what = ROWS_CALLED[study.unit]
    log(f"model {rec['info']['name']}: {stack.layers} layers x {stack.n} {what} x width {stack.width}, "
        f"{_how(rec)}{_lost(rec, study, len(ctx.corpus))}")
    _warn_cut(rec, study, len(ctx.corpus))


def _extract_control(study, ctx, ext, name, spec, given, progress, log) -> None:
    """The random-init control of one model, through the same shard path."""
    from ..models import random_init_like

    t0 = time.perf_counter()
    rname = name + RANDOM_INIT_SUFFIX
    control = random_init_like(given, seed=random_init_seed(study.seed, name))
    ext.controls[rname], crec = extract_model(study, rname, spec, ctx.corpus, ctx.store, ctx.device, progress,
                                              loaded=control, plan=ctx.plan, log=log)
    ext.control_records.append(crec)
    ctx.timings[f"extract/{rname}"] = time.perf_counter() - t0


def _how(rec: dict) -> str:
    if rec["reused"]:
        return "reused stored representations"
    part = f" ({rec['shards_reused']} of {rec['shards']} shards reused)" if rec["shards_reused"] else ""
    return f"extracted in {rec['seconds']:.1f} s{part}"


def _lost(rec: dict, study: Study, n_texts: int) -> str:
    lost = f", {len(rec['uncovered'])} planned words without a token" if rec.get("uncovered") else ""
    cut = rec["extract"].get("truncated") or 0
    if cut:
        lost += (f", {cut} of {n_texts} texts truncated to "
                 f"{rec['extract'].get('max_length_used', study.max_length)} tokens")
    return lost


#: Share of texts a model may cut at ``max_length`` before the study warns.
CUT_WARNING_SHARE = 0.05


def _warn_cut(rec: dict, study: Study, n_texts: int) -> None:
    """Warn when a model cut more than :data:`CUT_WARNING_SHARE` of the texts at ``max_length``: its units may be
    short (characters, for a character language model), and in the word unit a word past the cut is dropped for
    every model."""
    cut = rec["extract"].get("truncated") or 0
    if n_texts and cut > CUT_WARNING_SHARE * n_texts:
        used = rec["extract"].get("max_length_used", study.max_length)
        what = "its rows pool only the units before the cut" if study.unit == "sentence" else \
            "a row past the cut is dropped for every model"
        fix = (f"raise {typed('max_length')} (now {used})" if used >= study.max_length else
               f"{used} is the model's own limit (its positions or its tokenizer's model_max_length), below "
               f"{typed('max_length', study.max_length)}: shorter texts are the remedy")
        warnings.warn(f"model {rec['info'].get('name')!r} cut {cut} of {n_texts} texts at {used} of its units "
                      f"({rec['info'].get('architecture')}); {what}: {fix}", RuntimeWarning, stacklevel=2)


def _manifest(study: Study, ctx: _Context, ext: Extracted, agreement, caught: list, commands) -> dict:
    """The run's manifest: configuration, corpus, models, measures, versions, timings, warnings."""
    from ..measures import get_measure

    manifest = {
        "study": {**dataclasses.asdict(study), "name": study.name},
        "corpus": ctx.corpus.describe(),
        "models": [
            {**r["info"], "reused": r["reused"], "store_key": r["key"], "extract": r["extract"],
             "shards": r["shards"], "shards_reused": r["shards_reused"],
             **({"outliers": r["outliers"]} if "outliers" in r else {})}
            for r in ext.records
        ],
        "measures": {m: _measure_meta(get_measure(m)) for m in study.measures},
        "versions": versions(),
        "device": str(ctx.device),
        "timings": ctx.timings,
        "warnings": sorted(set(caught)),
        "commands": commands or [f"homoscope run {shlex.quote(str(ctx.out / 'study.toml'))}"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
    }
    manifest = portable_paths(manifest)
    if ext.rows_meta is not None:
        manifest["rows"] = ext.rows_meta
    if ext.control_records:
        manifest["controls"] = {
            "random_init": [{"name": r["info"]["name"], "fingerprint": r["info"].get("fingerprint"),
                             "notes": r["info"].get("notes"), "reused": r["reused"]} for r in ext.control_records],
        }
    if agreement is not None:
        manifest["agreement"] = agreement.meta
    return {"run": run_id(manifest), **manifest}


def _write(study, ctx: _Context, ext: Extracted, frame, manifest: dict, agreement, progress, t_all) -> dict:
    """Stage: the frame, figures, report, rows table, study file and manifest, swapped into the output
    folder together (:func:`~homoscope.report.write_outputs`); each carries the run's id."""
    from ..measures import get_measure
    from ..report import write_outputs
    from ..report.tables import with_run

    run = manifest["run"]
    files = {"study.toml": (f"# homoscope run {run}\n# paths starting ./ are relative to the folder the study ran "
                            f"in\n{_reproducible(study).to_toml()}").encode()}
    if ext.rows_table is not None:
        files["rows.csv"] = with_run(ext.rows_table, run).to_csv(index=False).encode()
    ctx.timings["total"] = time.perf_counter() - t_all
    manifest["timings"] = dict(ctx.timings)  # write_outputs adds the report's seconds to both
    try:
        out = write_outputs(frame, manifest, ctx.out, measure_info=lambda m: _measure_meta(get_measure(m)),
                            progress=progress, extra=agreement.frames if agreement is not None else None,
                            run_files=files, record_time=True)
    except OSError as err:
        raise StudyWriteError(
            f"could not write the study outputs to {str(ctx.out)!r}: {_os_reason(err)}; free space or fix "
            f"permissions there, or give another output folder as {typed('out')} (the folder is as it was before "
            "this run); the "
            f"representations of all {len(ext.records)} models are kept in the store {str(ctx.store.root)!r}, so "
            "a rerun recomputes none of them"
        ) from err
    if ext.rows_table is not None:
        out = {**out, "rows": [ctx.out / "rows.csv"]}
    return out


def _reproducible(study: Study) -> Study:
    """``study`` with a corpus file and the store as absolute paths, so that the results folder's study file
    runs the same study from any folder, except where they lie inside the working folder: those stay relative to
    it (a results folder kept with its project names no machine's paths; the study file says so). The output
    folder stays as given."""
    def shown(path: Path) -> str:
        full, here = path.resolve(), Path.cwd().resolve()
        return f"./{full.relative_to(here).as_posix()}" if full.is_relative_to(here) else str(full)

    corpus = Path(str(study.corpus))
    changes = {"corpus": shown(corpus)} if corpus.is_file() else {}
    if study.store is not None:
        changes["store"] = shown(Path(study.store))
    return dataclasses.replace(study, **changes) if changes else study


def run_id(manifest: dict) -> str:
    """The id of a run: 16 hex digits of the sha256 of what determines its numbers (the study's options but
    its folders, the corpus path and where it ran, ``EXECUTION_OPTIONS``; each model's and control's stored
    representations, the corpus's fingerprint, the homoscope version).

    Two runs with the same id compute the same results, so a rerun writes the same files byte for byte; a
    results folder whose files carry different ids mixes runs (:func:`~homoscope.report.load_results`).
    """
    from ..extract.store import fingerprint_key

    skip = ("out", "store", "corpus", *EXECUTION_OPTIONS)
    study = {k: v for k, v in manifest["study"].items() if k not in skip}
    models = [m.get("store_key") for m in manifest["models"]]
    controls = [c.get("fingerprint") for c in (manifest.get("controls") or {}).get("random_init", [])]
    corpus = manifest["corpus"].get("fingerprint")  # the texts, ids, labels and documents, however the path is spelt
    return fingerprint_key(study=study, models=models, controls=controls, corpus=corpus,
                           rows=manifest.get("rows"), version=__version__)[:16]


def portable_paths(obj):
    """``obj`` (nested dicts, lists, strings) with the cache folder written ``$HOMOSCOPE_HOME``, the working
    folder ``.`` and the user's home folder ``~``, so a manifest or report can be shared without the machine's
    paths."""
    from .._paths import homoscope_home

    prefixes = [(str(homoscope_home(create=False)), "$HOMOSCOPE_HOME"), (os.getcwd(), "."), (str(Path.home()), "~")]

    def walk(x):
        if isinstance(x, str):
            for prefix, short in prefixes:
                if x == prefix or x.startswith(prefix + os.sep):
                    return short + x[len(prefix):]
            return x
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        return x

    return walk(obj)


def _agreement_gap(study: Study, corpus) -> str | None:
    """Why the study cannot run the probes and prediction agreement (None if it can).

    Raises ValueError where ``agreement`` is ``on``: :func:`_prepare` calls it once the corpus is loaded, so
    that the refusal comes before any model loads.
    """
    why = None
    if study.unit != "sentence":
        why = f"{typed('unit', study.unit)}: probes need one row per text ({typed('unit', 'sentence')})"
    elif corpus.labels is None:
        why = f"the corpus has no labels (give {typed('label_column')} for a .jsonl/.csv corpus)"
    elif corpus.doc_ids is None:
        why = f"the corpus has no document ids (give {typed('doc_column')}), needed to split by document"
    if why is not None and study.agreement == "on":
        raise ValueError(f"{typed('agreement', 'on')} but {why}")
    return why


def _run_agreement(study: Study, stacks: dict, corpus, log):
    """Probes, prediction agreement and outcome homogenization, or None where the study has none.

    ``auto`` runs when the unit is sentence and the corpus has labels and document ids, and logs
    why otherwise; ``on`` raises ValueError instead of skipping.
    """
    if study.agreement == "off":
        return None
    why = _agreement_gap(study, corpus)
    if why is not None:
        log(f"prediction agreement skipped: {why}")
        return None
    from ..agreement import run_agreement

    try:
        result = run_agreement(stacks, corpus, test_size=study.probe_test_size, seed=study.seed,
                               bootstrap=study.bootstrap)
    except ValueError as err:
        if study.agreement == "on":
            raise
        log(f"prediction agreement skipped: {err}")
        warnings.warn(f"prediction agreement skipped: {err}", RuntimeWarning, stacklevel=2)
        return None
    probes = result.frames["probes"]
    best = probes[probes["best"]] if "best" in probes else probes
    summary = ", ".join(f"{r.model} {r.value:.3f} (layer {r.layer})" for r in best.itertuples())
    log(f"probe accuracy at each model's best layer: {summary}")
    return result


def _resolve_specs(study: Study, loaded_models: dict | None) -> dict:
    """Resolve every model spec the study will load (no loading, no network), refuse one that needs code
    of its own without ``trust_remote_code`` and check the files of every model folder there is
    (:func:`~homoscope.models.check_model_folder`: JSON files, safetensors headers), so that a typo or a
    truncated file in the last model fails before the first is extracted.

    Returns ``{name: ModelSource}``. Raises the resolver's ValueError (what was tried) and the refusal
    (:func:`~homoscope.models.check_custom_code`).
    """
    from ..models import check_custom_code, check_model_folder, is_assembled, resolve

    sources = {}
    for name, spec in study.model_specs():
        if name in (loaded_models or {}):
            continue
        sources[name] = source = resolve(spec, must_exist=not study.install)
        check_custom_code(source, study.trust_remote_code)
        if source.kind == "local" or (source.kind == "packaged" and is_assembled(source.name)):
            check_model_folder(source.location, packaged=source.name if source.kind == "packaged" else None)
    return sources


def _align_rows(plan, corpus, ext: Extracted) -> None:
    """Drop the planned rows any model left uncovered, for every model alike (a keep mask on the stacks).

    Sets the extraction result's stacks and controls to the kept rows, its row table (kept rows
    renumbered from 0), the manifest's ``rows`` entry, and per-row bootstrap groups (the text's
    document id, else the text index, so words of one text are resampled together).
    """
    records = ext.records + ext.control_records
    dropped = sorted({r for rec in records for r in rec.get("uncovered", [])})
    table = plan.row_table(corpus.texts, corpus.ids).rename(columns={"row": "planned_row"})
    examples = []
    if dropped:
        keep = np.setdiff1d(np.arange(len(plan.rows)), np.asarray(dropped, dtype=np.int64))
        ext.stacks = {name: s.select(keep) for name, s in ext.stacks.items()}
        ext.controls = {name: s.select(keep) for name, s in ext.controls.items()}
        labels = plan.labels(corpus.texts, corpus.ids)
        examples = [labels[r] for r in dropped[:10]]
        table = table.iloc[keep].reset_index(drop=True)
    table.insert(0, "row", range(len(table)))
    n = len(table)
    if n < 2:
        raise ValueError(f"only {n} {plan.unit} rows remain after dropping words some model gives no token; "
                         "use more sentences")
    ti = table["text_index"].tolist()
    ext.groups = [corpus.doc_ids[i] for i in ti] if corpus.doc_ids is not None else [str(i) for i in ti]
    ext.rows_table = table
    ext.rows_meta = {
        **plan.describe(),
        "n": n,
        "dropped_words": len(dropped),
        "dropped_by_model": {rec["info"]["name"]: len(rec.get("uncovered", [])) for rec in records},
        "dropped_examples": examples,
        "file": "rows.csv",
    }


def _measure_meta(info) -> dict:
    d = dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)
    d.pop("fn", None)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if not callable(v)}
