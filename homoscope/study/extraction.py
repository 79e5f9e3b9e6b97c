"""Stage: extract one model's representations into the store, shard by shard (stored shards are reused)."""
from __future__ import annotations

import dataclasses
import gc
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._memory import return_freed_memory
from .._spelling import typed
from ..extract import ExtractStats, OutlierMoments, RepresentationStore, extract, fingerprint_key, suggested_batch_tokens
from .options import DTYPES, ROWS_CALLED, Study, StudyWriteError, _os_reason
from .shards import ShardedStack, shard_ranges

# random-init controls draw their weights from seed + this offset, so that a control never shares
# its random stream with a model built from the study's own seed
RANDOM_INIT_SEED_OFFSET = 7919
RANDOM_INIT_SUFFIX = " (random-init)"

@dataclasses.dataclass
class _Job:
    """One model's extraction: what every shard needs (the loaded model, the key parts, the plan)."""

    study: Study
    name: str
    loaded: object
    corpus: object
    store: RepresentationStore
    device: torch.device
    parts: dict
    info: dict
    plan: object = None
    encoding: object = None
    progress: bool = True

    @property
    def max_len(self) -> int:
        from ..extract import effective_max_length

        return effective_max_length(self.loaded, self.study.max_length)


def extract_model(
    study: Study,
    name: str,
    spec: str,
    corpus,
    store: RepresentationStore,
    device: torch.device,
    progress: bool = True,
    loaded=None,
    plan=None,
    log=None,
):
    """One model's representations, shard by shard into the store, reusing the shards already there.

    The corpus is cut into shards of ``study.shard_size`` texts (:func:`~.shards.shard_ranges`); each
    shard's ``[L+1, rows, d]`` stack is one store entry, keyed by the fingerprint of (model weights,
    config, tokenizer, corpus, unit, pooling, max length, dtype, padding, plan) and the shard's text
    range, and written as soon as the shard is done: a killed run recomputes at most the shard in
    flight. The model is loaded (unless ``loaded`` is given) for its fingerprint and freed after.

    Returns ``(stack, record)``: ``stack`` is a :class:`~.shards.ShardedStack` (``[L+1, n, d]``, read
    from the store on demand; ``.load()`` gives the tensor), ``record`` holds the model info, the
    summed extraction stats, ``reused`` (every shard was stored), ``shards`` and ``shards_reused``,
    and the outlier report (``record['outliers']``) when ``study.outliers``.

    For ``study.unit == 'word'`` the rows follow ``plan`` (a :class:`~homoscope.extract.words.WordPlan`,
    made from the corpus when None), one per planned word; words this model's tokenizer gives no
    (untruncated) token are zero rows listed in ``record['uncovered']`` and counted in
    ``record['extract']['dropped_words']``; :func:`run_study` drops them for every model. For
    ``'token'`` the rows follow ``plan`` (a :class:`~homoscope.extract.words.TokenPlan`); when None it
    is made from this model's tokenizer and returned in ``record['plan']``, and a model whose token
    sequences differ from the plan's raises ValueError suggesting ``unit='word'``.

    Raises:
        ValueError: a slow tokenizer for word/token units (names the model), token sequences that
            differ from the plan, a wrong layer count, and the loader's and runner's errors.
        StudyWriteError: a shard cannot be written to the store (shards written before are kept).
    """
    t0 = time.perf_counter()
    own = loaded is None
    if own:
        loaded = _load(study, name, spec, device)
    job = open_job(study, name, loaded, corpus, store, device, plan=plan, progress=progress)
    load_s = time.perf_counter() - t0
    shards = shard_plan(job)
    bar = tqdm(total=len(corpus.texts), desc=f"{name}: {len(shards)} shards", unit="text",
               disable=not progress or len(shards) < 2)
    records = []
    for shard in shards:
        records.append(run_shard(job, shard))
        bar.update(shard.texts[1] - shard.texts[0])
        bar.set_postfix(reused=sum(r["reused"] for r in records))
    bar.close()
    stack, record = finish_job(job, shards, records, load_s, log)
    if own:
        del loaded, job
        _free(device)
    record["seconds"] = time.perf_counter() - t0
    return stack, record


def open_job(study: Study, name: str, loaded, corpus, store: RepresentationStore, device: torch.device, *,
             plan=None, progress: bool = True) -> "_Job":
    """What every shard of one loaded model needs: its store key parts, its row plan (made here for a token unit
    without one; words follow ``plan``), the checks of :func:`_check_fits`. Raises their ValueErrors."""
    if dataclasses.is_dataclass(loaded) and dataclasses.is_dataclass(loaded.info) and loaded.info.name != name:
        # errors from the runner name the model as the study does
        loaded = dataclasses.replace(loaded, info=dataclasses.replace(loaded.info, name=name))
    info = loaded.info.asdict() if hasattr(loaded.info, "asdict") else dict(vars(loaded.info))
    info["name"] = name
    job = _Job(study, name, loaded, corpus, store, device, _key_parts(study, loaded, info, corpus), info,
               plan, progress=progress)
    _plan_rows(job)
    _check_fits(job)
    return job


def _key_parts(study: Study, loaded, info: dict, corpus) -> dict:
    """What the store key of this model's representations is made of (the plan's digest is added later)."""
    from ..extract import effective_max_length

    parts = {
        "model": info.get("fingerprint"),
        "config": _config_digest(loaded),
        "tokenizer": _tokenizer_digest(loaded),
        "corpus": corpus.fingerprint(),
        "unit": study.unit,
        "pooling": row_pooling(study, loaded),
        # the length texts are cut to: the study's, capped at the tokenizer's model_max_length
        "max_length": effective_max_length(loaded, study.max_length),
        "dtype": study.dtype,
        "padding": "right",
    }
    if info.get("stack"):  # the decoder of an encoder-decoder model: the same weights and config as its encoder
        parts["stack"] = info["stack"]
    if study.special_tokens == "include":
        parts["special_tokens"] = "include"
    if study.unit == "token":
        parts.pop("pooling")
    return parts


def row_pooling(study: Study, loaded) -> str:
    """How a model's rows pool its units: the study's pooling, except for words of a model that names the unit
    standing for a word (``word_pooling`` of a :class:`~homoscope.models.modules.LayeredModule`: Flair's rule
    for character language models); ``mean`` for token rows (one unit each)."""
    if study.unit == "token":
        return "mean"
    own = getattr(loaded.model, "word_pooling", None) if study.unit == "word" else None
    return own or study.pooling


def _plan_rows(job: _Job) -> None:
    """The word or token plan of the job (made here when not given) and its digest in the key parts."""
    from ..extract.words import check_same_tokens, encode_tokens, plan_tokens, plan_words

    study, texts = job.study, job.corpus.texts
    if study.unit == "word" and job.plan is None:
        job.plan = plan_words(texts, punctuation=study.punctuation, max_rows=study.max_rows, seed=study.seed)
    elif study.unit == "token":
        include = study.special_tokens == "include"
        job.encoding, tokens = encode_tokens(job.loaded.tokenizer, texts, job.max_len, include, job.name)
        if job.plan is None:
            job.plan = plan_tokens(tokens, include_special=include, max_rows=study.max_rows, seed=study.seed,
                                   reference=job.name)
        else:
            check_same_tokens(job.plan, tokens, job.name)
    if job.plan is not None:
        job.parts["plan"] = job.plan.digest()


def _check_fits(job: _Job) -> None:
    """What this model's tokenizer and width mean for the study, before its extraction: its special tokens must
    leave room for text in ``max_length`` tokens, and the measures that need more rows than columns must
    have them (:func:`~.scoring.check_rows_above_widths`). Raises ValueError naming the model and the option."""
    from .scoring import check_rows_above_widths

    study, tokenizer = job.study, job.loaded.tokenizer
    count = getattr(tokenizer, "num_special_tokens_to_add", None)
    special = count() if callable(count) else 0
    if special >= job.max_len:
        capped = f" (capped at the model's {job.max_len})" if job.max_len < study.max_length else ""
        raise ValueError(f"model {job.name!r} adds {special} special tokens to every text, which leave no room for "
                         f"text in {typed('max_length', study.max_length)} tokens{capped}; raise "
                         f"{typed('max_length')}")
    rows = len(job.plan.rows) if job.plan is not None else len(job.corpus.texts)
    what = ROWS_CALLED[study.unit]
    width = job.info.get("width")
    check_rows_above_widths(study.measures, rows, {job.name: int(width)} if width else {}, what)


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard of a model's extraction: texts ``[t0, t1)``, its rows ``[r0, r1)`` and its store key."""

    texts: tuple[int, int]
    rows: tuple[int, int]
    key: str


def shard_plan(job: _Job) -> list[Shard]:
    """The job's shards in corpus order: ``shard_size`` texts each (words or tokens: at most ``shard_size`` rows,
    cut between texts), each keyed by the job's key parts and its text range."""
    if job.plan is None:
        return [Shard((t0, t1), (t0, t1), fingerprint_key(**job.parts, shard=[t0, t1]))
                for t0, t1 in shard_ranges(len(job.corpus.texts), job.study.shard_size)]
    per_text = [len(r) for r in job.plan.per_text()]
    bounds = np.concatenate([[0], np.cumsum(per_text)])
    return [Shard((t0, t1), (int(bounds[t0]), int(bounds[t1])), fingerprint_key(**job.parts, shard=[t0, t1]))
            for t0, t1 in shard_ranges(len(job.corpus.texts), job.study.shard_size, rows=per_text)]


def run_shard(job: _Job, shard: Shard) -> dict:
    """One shard from the store, or from the model and then into the store; returns its record (``reused``:
    whether it was found stored; ``shape``: ``[L+1, rows, d]``)."""
    rec = job.store.record(job.name, shard.key)
    if rec is not None and isinstance(rec.get("extract"), dict):
        return {**rec, "reused": True}
    # absent, partial or not a shard record
    (t0, t1), rows = shard.texts, shard.rows
    got = _compute_shard(job, t0, t1, rows)
    rec = {"extract": got["extract"], "uncovered": got["uncovered"], "texts": [t0, t1], "rows": list(rows)}
    _put(job, shard.key, got["stack"], rec)
    rec = {**rec, "shape": list(got["stack"].shape), "reused": False}
    del got
    return_freed_memory()  # resident memory stays flat from shard to shard
    return rec


def finish_job(job: _Job, shards: list[Shard], records: list[dict], load_s: float,
               log=None) -> tuple[ShardedStack, dict]:
    """The model's stack over its stored shards and its record (:func:`_model_record`), once every shard is in
    the store (``records``: what :func:`run_shard` returned for each, in order)."""
    reused = sum(r["reused"] for r in records)
    if log is not None and reused:
        log(f"reused {reused} of {len(records)} shards of {job.name}")
    L, d = records[0]["shape"][0], records[0]["shape"][2]
    sizes = tuple(s.rows[1] - s.rows[0] for s in shards)
    stack = ShardedStack(job.store, job.name, tuple(s.key for s in shards), sizes, L, d)
    return stack, _model_record(job, job.info, stack, records, load_s)


def _put(job: _Job, key: str, stack: torch.Tensor, rec: dict) -> None:
    try:
        job.store.put(job.name, key, stack, rec)
    except OSError as err:
        raise StudyWriteError(
            f"could not write the representations of model {job.name!r} to the store {str(job.store.root)!r}: "
            f"{_os_reason(err)}; free space or fix permissions there, or give another folder as "
            f"{typed('store')}; models stored before this one are kept and reused by the next run, and so are "
            "this model's finished shards"
        ) from err


def _compute_shard(job: _Job, t0: int, t1: int, rows: tuple[int, int]) -> dict:
    """The stack ``[L+1, rows, d]`` of texts ``[t0, t1)`` from the model, with its stats and uncovered rows."""
    from ..extract import extract_rows
    from ..extract.words import encode_words, token_groups

    study, loaded = job.study, job.loaded
    stats = ExtractStats()
    batch_tokens = study.batch_tokens or max(suggested_batch_tokens(job.device), study.max_length)
    uncovered: list[int] = []
    if study.unit == "sentence":
        stack = extract(loaded, job.corpus.texts[t0:t1], pooling=study.pooling, max_length=study.max_length,
                        batch_tokens=batch_tokens, progress=job.progress, stats=stats,
                        include_special=study.special_tokens == "include")
    else:
        t = time.perf_counter()
        if job.encoding is None:  # words: one tokenization of the corpus serves every shard
            job.encoding = encode_words(loaded.tokenizer, job.corpus.texts, job.plan, job.max_len, job.name)
            if len(job.encoding.uncovered) == len(job.plan.rows):
                raise ValueError(f"model {job.name!r} gives no token to any planned word of the corpus")
        enc = job.encoding
        groups = enc.groups if study.unit == "word" else token_groups(job.plan, enc)
        uncovered = [r for r in enc.uncovered if rows[0] <= r < rows[1]]
        stats.n, stats.truncated = t1 - t0, sum(t0 <= c < t1 for c in enc.cut)
        stats.dropped_words = len(uncovered)
        if any(groups[t0:t1]):
            got = extract_rows(loaded, enc.ids[t0:t1], enc.special[t0:t1], groups[t0:t1],
                               pooling=row_pooling(study, loaded),
                               batch_tokens=max(batch_tokens, max(len(x) for x in enc.ids)),
                               progress=job.progress, stats=stats)
        else:  # no planned row of this shard has a token here (sampling, uncovered words): nothing to run
            got = torch.zeros(job.info["blocks"] + 1, 0, job.info["width"])
        stack = _with_uncovered(got, rows, uncovered)
        stats.rows, stats.seconds = rows[1] - rows[0], time.perf_counter() - t
    blocks = job.info.get("blocks")
    if blocks is not None and stack.shape[0] != blocks + 1:
        raise ValueError(f"model {job.name!r} returned {stack.shape[0]} hidden states; expected blocks + 1 = "
                         f"{blocks + 1}")
    ext = dataclasses.asdict(stats)
    ext["max_length_used"] = job.max_len  # the study's max_length capped at the model's limit
    return {"stack": stack, "extract": ext, "uncovered": uncovered}


def _with_uncovered(got: torch.Tensor, rows: tuple[int, int], uncovered: list[int]) -> torch.Tensor:
    """The shard's planned rows, with zero rows where this model gives a planned row no token."""
    if not uncovered:
        return got
    stack = torch.zeros(got.shape[0], rows[1] - rows[0], got.shape[2], dtype=got.dtype)
    gone = {r - rows[0] for r in uncovered}
    stack[:, [r for r in range(rows[1] - rows[0]) if r not in gone], :] = got
    return stack


_SUMMED = ("n", "truncated", "batches", "tokens", "oom_retries", "seconds", "rows", "texts_run", "dropped_words")


def _model_record(job: _Job, info: dict, stack: ShardedStack, shards: list[dict], load_s: float) -> dict:
    """The model's record: info, stats summed over shards, reuse counts, uncovered rows, outliers."""
    ext = {k: sum(r["extract"].get(k, 0) or 0 for r in shards) for k in _SUMMED}
    ext["notes"] = sorted({note for r in shards for note in r["extract"].get("notes", [])})
    ext["max_length_used"] = shards[0]["extract"].get("max_length_used", job.study.max_length)
    ext["shards"] = len(shards)
    ext["pooling"] = job.parts.get("pooling", "mean")  # as the rows were pooled (a module may name its own)
    uncovered = [u for r in shards for u in r.get("uncovered", [])]
    reused = sum(r["reused"] for r in shards)
    record = {"info": info, "reused": reused == len(shards), "shards": len(shards), "shards_reused": reused,
              "key": fingerprint_key(**job.parts), "load_s": load_s, "extract": ext, "uncovered": uncovered}
    if job.plan is not None:
        record["plan"] = job.plan
    if job.study.outliers:
        texts, ids = job.corpus.texts, job.corpus.ids
        labels = job.plan.labels(texts, ids) if job.plan is not None else list(ids)
        keep = np.setdiff1d(np.arange(stack.n), np.asarray(uncovered, dtype=np.int64)) if uncovered else None
        acc = OutlierMoments()
        for chunk in stack.select(keep).chunks():
            acc.update(chunk)
        record["outliers"] = acc.report(labels, row_ids=keep)
    return record


def _config_digest(loaded) -> str | None:
    """sha256 of the model's config (a changed activation or norm changes the numbers, not the weights)."""
    import hashlib

    cfg = getattr(loaded.model, "config", None)
    if cfg is None:
        return None
    return hashlib.sha256(cfg.to_json_string(use_diff=False).encode()).hexdigest()


def _tokenizer_digest(loaded) -> str | None:
    """sha256 of the fast tokenizer's full definition (normalizer, vocabulary, special tokens)."""
    import hashlib

    backend = getattr(loaded.tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    for state in ("truncation", "padding"):  # call-time settings that encoding texts changes in place
        spec.pop(state, None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def random_init_seed(seed: int, name: str) -> int:
    """The weight seed of a model's random-init control: the study seed, an offset, and a number drawn
    from the model's name, so two models of one architecture get different random networks (else their
    control would be about 1) and a model keeps its control when the study's model order changes."""
    import hashlib

    return seed + RANDOM_INIT_SEED_OFFSET + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 1_000_003


def _load(study: Study, name: str, spec: str, device: torch.device):
    """Load model ``spec`` as the study asks; the weight fingerprints' cache goes inside ``store`` where given."""
    from ..models import load_model

    cache = None if study.store is None else Path(study.store) / "fingerprints"
    return load_model(spec, device=device, dtype=DTYPES[study.dtype], trust_remote_code=study.trust_remote_code,
                      auto_install=study.install, name=name, fingerprint=study.fingerprint, fingerprint_cache=cache)


def _free(device: torch.device) -> None:
    gc.collect()
    return_freed_memory()
    if device.type == "cuda":
        torch.cuda.empty_cache()


