"""Stage: extract one model's representations into the store (reused when the fingerprint matches)."""
from __future__ import annotations

import dataclasses
import gc
import json
import time

import torch

from ..extract import ExtractStats, RepresentationStore, extract, fingerprint_key, suggested_batch_tokens
from .options import DTYPES, Study, StudyWriteError, _os_reason

# random-init controls draw their weights from seed + this offset, so that a control never shares
# its random stream with a model built from the study's own seed
RANDOM_INIT_SEED_OFFSET = 7919
RANDOM_INIT_SUFFIX = " (random-init)"

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
) -> tuple[torch.Tensor, dict]:
    """Representations ``[L+1, n, d]`` of one model, from the store when the fingerprint matches.

    Loads the model (unless ``loaded`` is given), extracts, stores, and frees it. Returns
    (stack, record) where record holds the model info, extraction stats, whether it was reused,
    and the outlier report (``record['outliers']``, one entry per layer) when ``study.outliers``.

    For ``study.unit == 'word'`` the rows follow ``plan`` (a :class:`~homoscope.extract.words.WordPlan`,
    made from the corpus when None), one per planned word; words this model's tokenizer gives no
    (untruncated) token are zero rows listed in ``record['uncovered']`` and counted in
    ``record['extract']['dropped_words']``; :func:`run_study` drops them for every model. For
    ``'token'`` the rows follow ``plan`` (a :class:`~homoscope.extract.words.TokenPlan`); when None it
    is made from this model's tokenizer and returned in ``record['plan']``, and a model whose token
    sequences differ from the plan's raises ValueError suggesting ``unit='word'``. The store key
    holds the unit and the plan's digest, so stacks of different units never collide.

    Raises:
        ValueError: a slow tokenizer for word/token units (names the model), token sequences that
            differ from the plan, a wrong layer count, and the loader's and runner's errors.
    """
    from ..extract import effective_max_length, extract_rows, outlier_report
    from ..extract.words import check_same_tokens, encode_tokens, encode_words, plan_tokens, plan_words, token_groups
    from ..models import load_model

    t0 = time.perf_counter()
    own = loaded is None
    if own:
        loaded = load_model(
            spec,
            device=device,
            dtype=DTYPES[study.dtype],
            trust_remote_code=study.trust_remote_code,
            auto_install=study.install,
            name=name,
        )
    if dataclasses.is_dataclass(loaded) and dataclasses.is_dataclass(loaded.info) and loaded.info.name != name:
        # errors from the runner name the model as the study does
        loaded = dataclasses.replace(loaded, info=dataclasses.replace(loaded.info, name=name))
    info = loaded.info.asdict() if hasattr(loaded.info, "asdict") else dict(vars(loaded.info))
    info["name"] = name
    load_s = time.perf_counter() - t0
    unit = study.unit
    include_special = study.special_tokens == "include"
    parts = {
        "model": info.get("fingerprint"),
        "config": _config_digest(loaded),
        "tokenizer": _tokenizer_digest(loaded),
        "corpus": corpus.fingerprint(),
        "unit": unit,
        "pooling": study.pooling,
        "max_length": study.max_length,
        "dtype": study.dtype,
        "padding": "right",
    }
    if include_special:
        parts["special_tokens"] = "include"
    encoding = None
    if unit == "word":
        if plan is None:
            plan = plan_words(corpus.texts, punctuation=study.punctuation, max_rows=study.max_rows, seed=study.seed)
        parts["plan"] = plan.digest()
    elif unit == "token":
        max_len = effective_max_length(loaded, study.max_length)
        encoding, tokens = encode_tokens(loaded.tokenizer, corpus.texts, max_len, include_special, name)
        if plan is None:
            plan = plan_tokens(tokens, include_special=include_special, max_rows=study.max_rows, seed=study.seed,
                               reference=name)
        else:
            check_same_tokens(plan, tokens, name)
        parts.pop("pooling")
        parts["plan"] = plan.digest()
    key = fingerprint_key(**parts)
    hit = store.get(name, key)
    if hit is not None:
        stack, rec = hit
        uncovered = list(rec.get("uncovered", []))
        record = {"info": info, "reused": True, "key": key, "load_s": load_s, "extract": rec.get("extract", {})}
    else:
        stats = ExtractStats()
        batch_tokens = study.batch_tokens or suggested_batch_tokens(device)
        uncovered = []
        if unit == "sentence":
            stack = extract(
                loaded,
                corpus.texts,
                pooling=study.pooling,
                max_length=study.max_length,
                batch_tokens=batch_tokens,
                progress=progress,
                stats=stats,
                include_special=include_special,
            )
        else:
            t1 = time.perf_counter()
            max_len = effective_max_length(loaded, study.max_length)
            if unit == "word":
                encoding = encode_words(loaded.tokenizer, corpus.texts, plan, max_len, name)
                groups = encoding.groups
                uncovered = encoding.uncovered
                if len(uncovered) == len(plan.rows):
                    raise ValueError(f"model {name!r} gives no token to any planned word of the corpus")
            else:
                groups = token_groups(plan, encoding)
            stats.n, stats.truncated = len(corpus.texts), encoding.truncated
            stats.dropped_words = len(uncovered)
            rows = extract_rows(
                loaded,
                encoding.ids,
                encoding.special,
                groups,
                pooling=study.pooling if unit == "word" else "mean",
                batch_tokens=max(batch_tokens, max(len(x) for x in encoding.ids)),
                progress=progress,
                stats=stats,
            )
            if uncovered:
                stack = torch.zeros(rows.shape[0], len(plan.rows), rows.shape[2], dtype=rows.dtype)
                gone = set(uncovered)
                stack[:, [r for r in range(len(plan.rows)) if r not in gone], :] = rows
            else:
                stack = rows
            stats.rows = len(plan.rows)
            stats.seconds = time.perf_counter() - t1
        blocks = info.get("blocks")
        if blocks is not None and stack.shape[0] != blocks + 1:
            raise ValueError(
                f"model {name!r} returned {stack.shape[0]} hidden states; expected blocks + 1 = {blocks + 1}"
            )
        ext = dataclasses.asdict(stats)
        # the length texts were cut to (the study's max_length capped at the model's limit)
        ext["max_length_used"] = effective_max_length(loaded, study.max_length)
        try:
            store.put(name, key, stack, {"info": info, "extract": ext, "uncovered": uncovered})
        except OSError as err:
            raise StudyWriteError(
                f"could not write the representations of model {name!r} to the store {str(store.root)!r}: "
                f"{_os_reason(err)}; free space or fix permissions there, or pass another --store; models "
                "stored before this one are kept and reused by the next run"
            ) from err
        record = {"info": info, "reused": False, "key": key, "load_s": load_s, "extract": ext}
    record["uncovered"] = uncovered
    if plan is not None:
        record["plan"] = plan
    if study.outliers:
        labels = plan.labels(corpus.texts, corpus.ids) if plan is not None else list(corpus.ids)
        gone = set(uncovered)
        keep = [r for r in range(stack.shape[1]) if r not in gone] if gone else None
        record["outliers"] = outlier_report(stack, labels=labels, rows=keep)
    if own:
        del loaded
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    record["seconds"] = time.perf_counter() - t0
    return stack, record


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
    from ..models import load_model

    return load_model(spec, device=device, dtype=DTYPES[study.dtype], trust_remote_code=study.trust_remote_code,
                      auto_install=study.install, name=name)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


