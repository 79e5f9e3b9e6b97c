"""A study end to end: :func:`run_study` loads the corpus, extracts each model in turn (reusing stored
representations), scores every model pair with every measure at all layer pairs, and writes the
tidy results frame, figures, ``manifest.json`` and ``report.md`` into ``out``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .. import __version__
from ..extract import RepresentationStore
from .extraction import RANDOM_INIT_SUFFIX, _free, _load, extract_model, random_init_seed
from .options import Study, StudyWriteError, _os_reason, best_device, check_writable
from .scoring import model_pairs, score_pairs

@dataclass
class StudyResult:
    """What a study produced: the tidy frame, the output folder, the manifest and the files."""

    frame: pd.DataFrame
    out: Path
    manifest: dict
    files: dict
    representations: dict = field(default_factory=dict, repr=False)
    rows: pd.DataFrame | None = field(default=None, repr=False)
    controls: dict = field(default_factory=dict, repr=False)
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
    """Run a study end to end and write its outputs.

    Args:
        study: the configuration (validated here).
        progress: tqdm bars for extraction and measures.
        commands: shell commands that reproduce the study (for the report).
        loaded_models: optional ``{name: LoadedModel}`` used instead of loading the spec
            (in-memory models, tests).
        log: where one-line progress messages go (``print`` by default; None = silent).

    Returns a :class:`StudyResult`. Raises ValueError for bad configuration (see
    :meth:`Study.validate`; an output or store folder that cannot be written and a model spec that
    resolves to nothing are found before any model runs), the corpus and model loaders' errors, and
    the measures' errors; :class:`StudyWriteError` when writing the store or the outputs fails
    (disk full, permissions), keeping what was written before.
    """
    from ..corpora import load_corpus
    from ..measures import get_measure
    from ..report import write_outputs

    log = log or (lambda *_a, **_k: None)
    study.validate()
    out = Path(study.out)
    # fail before hours of extraction, not after: a folder we cannot write, a spec that names nothing
    check_writable(out, "out", "choose another output folder with --out (or 'out' in the study file)")
    _resolve_specs(study, loaded_models)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    caught: list[str] = []
    t_all = time.perf_counter()
    with warnings.catch_warnings(record=True) as wlist:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        corpus = load_corpus(
            study.corpus,
            sentences=study.sentences,
            seed=study.seed,
            text_column=study.text_column,
            label_column=study.label_column,
            doc_column=study.doc_column,
        )
        timings["load_corpus"] = time.perf_counter() - t0
        log(f"corpus: {corpus.source}, {len(corpus)} texts")

        device = best_device(study.device)
        store_hint = "pass another folder with --store (or 'store' in the study file)"
        if study.store is not None:
            check_writable(Path(study.store), "store", store_hint)
        try:
            store = RepresentationStore(study.store)
        except OSError as err:
            raise ValueError(f"store={study.store!r} cannot be created: {_os_reason(err)}; {store_hint}") from None
        check_writable(store.root, "store", store_hint)
        plan = None
        if study.unit == "word":
            from ..extract.words import plan_words

            t0 = time.perf_counter()
            plan = plan_words(corpus.texts, punctuation=study.punctuation, max_rows=study.max_rows, seed=study.seed)
            timings["plan_words"] = time.perf_counter() - t0
            sampled = f", {len(plan.rows)} sampled (max_rows={study.max_rows})" if plan.sampled else ""
            log(f"words: {plan.total} in {len(corpus)} texts (punctuation={study.punctuation}){sampled}")
        stacks: dict[str, torch.Tensor] = {}
        model_records, control_records = [], []
        what = {"sentence": "texts", "word": "words", "token": "tokens"}[study.unit]
        controls: dict[str, torch.Tensor] = {}
        for name, spec in study.model_specs():
            given = (loaded_models or {}).get(name)
            if study.random_init and given is None:
                given = _load(study, name, spec, device)
            stack, rec = extract_model(study, name, spec, corpus, store, device, progress, loaded=given, plan=plan)
            if study.random_init:
                from ..models import random_init_like

                t0 = time.perf_counter()
                rname = name + RANDOM_INIT_SUFFIX
                control = random_init_like(given, seed=random_init_seed(study.seed, name))
                controls[rname], crec = extract_model(study, rname, spec, corpus, store, device, progress,
                                                      loaded=control, plan=plan)
                control_records.append(crec)
                del control
                timings[f"extract/{rname}"] = time.perf_counter() - t0
                if name not in (loaded_models or {}):
                    del given
                    _free(device)
            if plan is None and study.unit == "token":
                plan = rec["plan"]
            stacks[name] = stack
            model_records.append(rec)
            timings[f"extract/{name}"] = rec["seconds"]
            how = "reused stored representations" if rec["reused"] else f"extracted in {rec['seconds']:.1f} s"
            lost = f", {len(rec['uncovered'])} planned words without a token" if rec.get("uncovered") else ""
            cut = rec["extract"].get("truncated") or 0
            if cut:
                lost += (f", {cut} of {len(corpus)} texts truncated to "
                         f"{rec['extract'].get('max_length_used', study.max_length)} tokens")
            log(f"model {name}: {stack.shape[0]} layers x {stack.shape[1]} {what} x width {stack.shape[2]}, {how}{lost}")

        rows_table, rows_meta, groups = None, None, corpus.doc_ids
        if plan is not None:
            both, rows_table, rows_meta, groups = _align_rows(plan, corpus, {**stacks, **controls},
                                                              model_records + control_records)
            stacks = {k: both[k] for k in stacks}
            controls = {k: both[k] for k in controls}
            if rows_meta["dropped_words"]:
                log(f"dropped {rows_meta['dropped_words']} words that some model gives no token; "
                    f"n = {rows_meta['n']} {what} for every model")

        t0 = time.perf_counter()
        names = [n for n, _ in study.model_specs()]
        frame = score_pairs(
            stacks,
            model_pairs(names, study.pairs),
            list(study.measures),
            unit=study.unit,
            permutations=study.permutations,
            bootstrap=study.bootstrap,
            groups=groups,
            seed=study.seed,
            device=device,
            progress=progress,
            controls={k[: -len(RANDOM_INIT_SUFFIX)]: v for k, v in controls.items()} or None,
        )
        timings["measures"] = time.perf_counter() - t0
        agreement = _run_agreement(study, stacks, corpus, log)
        if agreement is not None:
            timings["agreement"] = agreement.meta.get("seconds", {}).get("total", float("nan"))
        caught = [f"{w.category.__name__}: {w.message}" for w in wlist]

    manifest = {
        "study": {**dataclasses.asdict(study), "name": study.name},
        "corpus": corpus.describe(),
        "models": [
            {**r["info"], "reused": r["reused"], "store_key": r["key"], "extract": r["extract"],
             **({"outliers": r["outliers"]} if "outliers" in r else {})}
            for r in model_records
        ],
        "measures": {m: _measure_meta(get_measure(m)) for m in study.measures},
        "versions": versions(),
        "device": str(device),
        "timings": timings,
        "warnings": sorted(set(caught)),
        "commands": commands or [f"homoscope run {out / 'study.toml'}"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
    }
    manifest = portable_paths(manifest)
    if rows_meta is not None:
        manifest["rows"] = rows_meta
    if control_records:
        manifest["controls"] = {
            "random_init": [{"name": r["info"]["name"], "fingerprint": r["info"].get("fingerprint"),
                             "notes": r["info"].get("notes"), "reused": r["reused"]} for r in control_records],
        }
    if agreement is not None:
        manifest["agreement"] = agreement.meta
    from ..extract.store import atomic_write_bytes

    try:
        # every file goes to a temporary name first: a failure keeps the earlier version whole
        atomic_write_bytes(out / "study.toml", study.to_toml().encode())
        if rows_table is not None:
            atomic_write_bytes(out / "rows.csv", rows_table.to_csv(index=False).encode())
        t0 = time.perf_counter()
        files = write_outputs(frame, manifest, out, measure_info=lambda m: _measure_meta(get_measure(m)),
                              progress=progress, extra=agreement.frames if agreement is not None else None)
        if rows_table is not None:
            files = {**files, "rows": [out / "rows.csv"]}
        timings["report"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_all
        # the manifest on disk gets the final timings
        atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=2, default=str).encode())
    except OSError as err:
        raise StudyWriteError(
            f"could not write the study outputs to {str(out)!r}: {_os_reason(err)}; free space or fix permissions "
            f"there, or pass another --out; the representations of all {len(model_records)} models are kept in "
            f"the store {str(store.root)!r}, so a rerun recomputes none of them"
        ) from err
    return StudyResult(frame=frame, out=out, manifest=manifest, files=files, representations=stacks,
                       rows=rows_table, controls=controls, agreement=agreement)


def portable_paths(obj):
    """``obj`` (nested dicts, lists, strings) with the cache folder written ``$HOMOSCOPE_HOME`` and the
    user's home folder ``~``, so a manifest or report can be shared without the machine's paths."""
    from .._paths import homoscope_home

    prefixes = [(str(homoscope_home()), "$HOMOSCOPE_HOME"), (str(Path.home()), "~")]

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


def _run_agreement(study: Study, stacks: dict, corpus, log):
    """Probes, prediction agreement and outcome homogenization, or None where the study has none.

    ``auto`` runs when the unit is sentence and the corpus has labels and document ids, and logs
    why otherwise; ``on`` raises ValueError instead of skipping.
    """
    if study.agreement == "off":
        return None
    why = None
    if study.unit != "sentence":
        why = f"unit={study.unit!r}: probes need one row per text (unit='sentence')"
    elif corpus.labels is None:
        why = "the corpus has no labels (give label_column for a .jsonl/.csv corpus)"
    elif corpus.doc_ids is None:
        why = "the corpus has no document ids (give doc_column), needed to split by document"
    if why is not None:
        if study.agreement == "on":
            raise ValueError(f"agreement='on' but {why}")
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


def _resolve_specs(study: Study, loaded_models: dict | None) -> None:
    """Resolve every model spec the study will load (no loading, no network), so that a typo in the
    last model fails before the first is extracted. Raises the resolver's ValueError (what was tried)."""
    from ..models import resolve

    for name, spec in study.model_specs():
        if name not in (loaded_models or {}):
            resolve(spec, must_exist=not study.install)


def _align_rows(plan, corpus, stacks: dict, records: list[dict]):
    """Drop the planned rows any model left uncovered, for every model alike.

    Returns (stacks with the kept rows, row table of the kept rows renumbered from 0, the manifest's
    ``rows`` entry, per-row bootstrap groups: the text's document id, else the text index, so words of
    one text are resampled together).
    """
    dropped = sorted({r for rec in records for r in rec.get("uncovered", [])})
    table = plan.row_table(corpus.texts, corpus.ids).rename(columns={"row": "planned_row"})
    examples = []
    if dropped:
        gone = set(dropped)
        keep = [r for r in range(len(plan.rows)) if r not in gone]
        index = torch.tensor(keep, dtype=torch.long)
        stacks = {name: s.index_select(1, index) for name, s in stacks.items()}
        labels = plan.labels(corpus.texts, corpus.ids)
        examples = [labels[r] for r in dropped[:10]]
        table = table.iloc[keep].reset_index(drop=True)
    table.insert(0, "row", range(len(table)))
    n = len(table)
    if n < 2:
        raise ValueError(f"only {n} {plan.unit} rows remain after dropping words some model gives no token; "
                         "use more sentences")
    ti = table["text_index"].tolist()
    groups = [corpus.doc_ids[i] for i in ti] if corpus.doc_ids is not None else [str(i) for i in ti]
    meta = {
        **plan.describe(),
        "n": n,
        "dropped_words": len(dropped),
        "dropped_by_model": {rec["info"]["name"]: len(rec.get("uncovered", [])) for rec in records},
        "dropped_examples": examples,
        "file": "rows.csv",
    }
    return stacks, table, meta, groups


def _measure_meta(info) -> dict:
    d = dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)
    d.pop("fn", None)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if not callable(v)}
