"""A study = corpus + models + measures + outputs; what ``run``, ``compare`` and ``demo`` execute.

A :class:`Study` is plain configuration. It reads from TOML with the same key names as the
command-line options::

    out = "out/my-study"
    corpus = "bbc"              # or a .txt / .jsonl / .csv file
    sentences = 1000
    models = ["minilm-l6", "mpnet-base", "smollm2-135m", "gemma3-270m"]
    measures = ["linear_cka", "debiased_cka"]
    unit = "sentence"           # or "word" (aligned across tokenizers) or "token"
    pooling = "mean"

With ``unit = "word"`` every text is split into words by a rule that knows no model
(``punctuation = "attach"`` or ``"split"``, see :func:`homoscope.extract.words.split_words`), each
model's tokens are mapped to words through character offsets, each word's tokens are pooled, and
words that some model leaves without a token are dropped for all models; ``max_rows`` caps the
number of rows (a seeded sample). ``unit = "token"`` needs identical tokenizers.

:func:`run_study` loads the corpus, extracts each model in turn (reusing stored
representations), scores every model pair with every measure at all layer pairs, and writes the
tidy results frame, figures, ``manifest.json`` and ``report.md`` into ``out``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import gc
import json
import os
import platform
import re
import sys
import tempfile
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import __version__
from .extract import ExtractStats, RepresentationStore, extract, fingerprint_key, suggested_batch_tokens
from .extract.runner import POOLINGS
from .extract.words import DEFAULT_MAX_ROWS, PUNCTUATION, ROW_POOLINGS, SPECIAL_TOKENS

PACKAGED_DEMO_MODELS = ("minilm-l6", "mpnet-base", "smollm2-135m", "gemma3-270m")
DEFAULT_MEASURES = ("linear_cka", "debiased_cka")
UNITS = ("sentence", "word", "token")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PAIRS = ("all", "first-vs-rest")
AGREEMENT_MODES = ("auto", "on", "off")
# random-init controls draw their weights from seed + this offset, so that a control never shares
# its random stream with a model built from the study's own seed
RANDOM_INIT_SEED_OFFSET = 7919
RANDOM_INIT_SUFFIX = " (random-init)"


class StudyWriteError(OSError):
    """Writing the representation store or a study's outputs failed (disk full, no permission, ...).

    The message names the folder, the system's reason and what to do. What was written before stays
    whole: stored models are reused by the next run, and each output file is either its earlier
    version or the new one, never a partial file.
    """


def _os_reason(err: OSError) -> str:
    """``'No space left on device (ENOSPC)'`` from an OSError."""
    code = errno.errorcode.get(err.errno, "") if isinstance(err.errno, int) else ""
    text = err.strerror or str(err) or type(err).__name__
    return f"{text} ({code})" if code else text


def check_writable(folder: str | Path, what: str, hint: str) -> None:
    """Raise ValueError unless a file can be created in ``folder``.

    A folder that does not exist yet is checked at its nearest existing parent (it will be created
    there). ``what`` names the setting (``out``, ``store``) and ``hint`` says what to do instead.
    The check creates and removes one empty temporary file.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what}={str(folder)!r}: {str(probe)!r} is a file, not a folder; {hint}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".homoscope-write-check-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        where = "" if probe == folder else f" (checked at {str(probe)!r}, where it would be created)"
        raise ValueError(f"{what}={str(folder)!r} is not writable{where}: {_os_reason(err)}; {hint}") from None


@dataclass
class Study:
    """Configuration of one study. Field names are the TOML keys and the CLI options.

    Attributes:
        models: model specs (packaged name, local HF folder, hub id), or ``{name, spec}`` tables.
        out: output folder.
        corpus: ``"bbc"`` (BBC News sentences) or a path to a .txt/.jsonl/.csv file.
        sentences: number of texts sampled from the corpus (None = all).
        seed: sampling, permutation and bootstrap seed.
        text_column, label_column, doc_column: column names for .jsonl/.csv corpora.
        measures: measure names from ``homoscope.measures.list_measures()``.
        unit: ``sentence`` (one pooled row per text), ``word`` (one row per word, aligned across
            tokenizers through character offsets) or ``token`` (one row per token; only between
            models whose tokenizers give identical token sequences).
        pooling: ``mean`` | ``first`` | ``last`` | ``cls`` over a text's tokens; for words ``mean``
            (default), ``first`` or ``last`` (Wu et al. 2020) over a word's tokens; unused for tokens.
        punctuation: word rule: ``attach`` (whitespace words, punctuation kept on them) or
            ``split`` (punctuation marks are words of their own).
        max_rows: word and token units: rows kept, sampled with ``seed`` (0 = all).
        special_tokens: ``exclude`` (default) or ``include`` special positions (BOS/CLS/SEP) as
            token rows and in sentence pooling; words never contain them.
        outliers: report per layer the top dimension's variance share and the largest-norm row.
        max_length: tokens per text, special tokens included (longer texts are truncated).
        dtype: ``float32`` | ``float16`` | ``bfloat16`` for the forward pass; pooled vectors
            are always float32 and measures accumulate in float64.
        device: ``auto`` (cuda, then mps, then cpu) or a torch device string.
        batch_tokens: padded tokens per forward pass; 0 = suited to the device.
        permutations: permutation-null draws per cell (0 = off).
        bootstrap: bootstrap resamples for confidence intervals (0 = off).
        pairs: ``all`` model pairs, or ``first-vs-rest`` (the first model against each other).
        random_init: also run each model's architecture with random weights through the same
            pipeline and put the same measure between the random-init copies in the frame's
            ``random_init`` column (the control of DESIGN.md).
        agreement: prediction agreement and outcome homogenization from linear probes:
            ``auto`` (when the corpus has labels and document ids and the unit is sentence),
            ``on`` (an error if it cannot run) or ``off``.
        probe_test_size: share of documents held out for the probes' test split.
        store: representation store folder (default: the homoscope cache).
        install: install missing packaged models first.
        trust_remote_code: allow model code from a model folder to run (off by default).
        name: study title used in the report.
    """

    models: list = field(default_factory=lambda: list(PACKAGED_DEMO_MODELS))
    out: str = "homoscope-out"
    corpus: str = "bbc"
    sentences: int | None = 1000
    seed: int = 0
    text_column: str = "text"
    label_column: str | None = None
    doc_column: str | None = None
    measures: list = field(default_factory=lambda: list(DEFAULT_MEASURES))
    unit: str = "sentence"
    pooling: str = "mean"
    punctuation: str = "attach"
    max_rows: int = DEFAULT_MAX_ROWS
    special_tokens: str = "exclude"
    outliers: bool = True
    max_length: int = 128
    dtype: str = "float32"
    device: str = "auto"
    batch_tokens: int = 0
    permutations: int = 0
    bootstrap: int = 0
    pairs: str = "all"
    random_init: bool = False
    agreement: str = "auto"
    probe_test_size: float = 0.3
    store: str | None = None
    install: bool = False
    trust_remote_code: bool = False
    name: str = "homoscope study"

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError naming the field, its value and the rule it breaks."""
        from .measures import list_measures

        if not isinstance(self.models, list) or len(self.models) < 2:
            raise ValueError(f"models={self.models!r}: a study needs at least two models")
        names = [n for n, _ in self.model_specs()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                f"models: the name(s) {', '.join(map(repr, dup))} appear more than once; give each model a "
                "distinct name (in TOML: {name = \"...\", spec = \"...\"})"
            )
        valid = list_measures()
        if not self.measures:
            raise ValueError("measures is empty: name at least one of " + ", ".join(valid))
        if not isinstance(self.measures, list):
            raise ValueError(f"measures={self.measures!r} must be a list of measure names")
        twice = sorted({m for m in self.measures if self.measures.count(m) > 1})
        if twice:
            raise ValueError(f"measures: {', '.join(map(repr, twice))} named more than once; name each measure once")
        _check_device(self.device)
        for m in self.measures:
            if m not in valid:
                raise ValueError(f"measures: {m!r} is not a known measure; valid: {', '.join(valid)}")
        if self.unit not in UNITS:
            raise ValueError(f"unit={self.unit!r} is not one of {', '.join(UNITS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.unit == "word" and self.pooling not in ROW_POOLINGS:
            raise ValueError(
                f"pooling={self.pooling!r} does not apply to unit='word'; pool a word's tokens with "
                f"{', '.join(ROW_POOLINGS)}")
        if self.punctuation not in PUNCTUATION:
            raise ValueError(f"punctuation={self.punctuation!r} is not one of {', '.join(PUNCTUATION)}")
        if self.special_tokens not in SPECIAL_TOKENS:
            raise ValueError(f"special_tokens={self.special_tokens!r} is not one of {', '.join(SPECIAL_TOKENS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.agreement not in AGREEMENT_MODES:
            raise ValueError(f"agreement={self.agreement!r} is not one of {', '.join(AGREEMENT_MODES)}")
        if not (isinstance(self.probe_test_size, (int, float)) and 0 < self.probe_test_size < 1):
            raise ValueError(f"probe_test_size={self.probe_test_size!r} must be a number between 0 and 1")
        if self.pairs not in PAIRS:
            raise ValueError(f"pairs={self.pairs!r} is not one of {', '.join(PAIRS)}")
        if self.sentences is not None and (not isinstance(self.sentences, int) or self.sentences < 4):
            raise ValueError(f"sentences={self.sentences!r} must be an integer >= 4 (or omitted for all)")
        for key in ("permutations", "bootstrap", "batch_tokens", "max_rows"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{key}={v!r} must be a non-negative integer")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length={self.max_length!r} must be an integer >= 2")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"out={self.out!r} is a file; give a folder for the study's outputs")

    def model_specs(self) -> list[tuple[str, str]]:
        """(display name, spec) for every model; a plain spec is named by its last path part."""
        result = []
        for m in self.models:
            if isinstance(m, dict):
                if "spec" not in m:
                    raise ValueError(f"models: the table {m!r} needs a 'spec' key")
                spec = str(m["spec"])
                name = str(m.get("name") or _default_name(spec))
            elif isinstance(m, str):
                spec, name = m, _default_name(m)
            else:
                raise ValueError(f"models: {m!r} must be a string or a {{name, spec}} table")
            result.append((name, spec))
        return result

    def to_toml(self) -> str:
        """The study as TOML that :meth:`from_toml` reads back."""
        lines = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            lines.append(f"{f.name} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, path: str | Path) -> "Study":
        """Read a study file. Raises ValueError naming the key and line for unknown keys or wrong types."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"study file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: not valid TOML: {err}") from None
        if "study" in data and isinstance(data["study"], dict) and len(data) == 1:
            data = data["study"]
        return cls.from_dict(data, source=str(path), text=text)

    @classmethod
    def from_dict(cls, data: dict, source: str = "study", text: str | None = None) -> "Study":
        """Build a study from a mapping, checking every key and type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in data.items():
            where = _line_of(text, key)
            if key not in fields:
                import difflib

                close = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"{source}{where}: unknown key {key!r}{hint}; valid keys: {', '.join(sorted(fields))}"
                )
            expected = _expected_types(key)
            if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
                names = "/".join(t.__name__ for t in expected)
                raise ValueError(
                    f"{source}{where}: key {key!r} must be {names}, got {type(value).__name__} {value!r}"
                )
            _check_entries(key, value, f"{source}{where}")
            kwargs[key] = value
        if "models" not in kwargs and text is not None:
            raise ValueError(f"{source}: missing key 'models' (a list of model specs)")
        return cls(**kwargs)


_TYPES = {
    "models": (list,),
    "measures": (list,),
    "sentences": (int,),
    "seed": (int,),
    "max_length": (int,),
    "batch_tokens": (int,),
    "permutations": (int,),
    "bootstrap": (int,),
    "install": (bool,),
    "trust_remote_code": (bool,),
    "max_rows": (int,),
    "outliers": (bool,),
    "random_init": (bool,),
    "probe_test_size": (float, int),
}


def _check_device(device: str) -> None:
    """Raise ValueError unless ``device`` is ``auto`` or a torch device available on this machine."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r} is not a torch device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device={device!r} is not available here ({torch.cuda.device_count()} CUDA devices); "
                         "use --device auto or cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r} is not available here; use --device auto or cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r}: homoscope runs on cpu, cuda or mps")


def _expected_types(key: str) -> tuple:
    return _TYPES.get(key, (str,))


def _check_entries(key: str, value, where: str) -> None:
    """The entries of the list keys: ``models`` holds specs or ``{name, spec}`` tables, ``measures`` names."""
    if key == "measures":
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"{where}: key 'measures' holds {type(item).__name__} {item!r}; "
                                 "each entry must be a measure name (a string)")
    elif key == "models":
        for item in value:
            if isinstance(item, dict):
                extra = sorted(set(item) - {"name", "spec"})
                if extra or not isinstance(item.get("spec"), str) or not isinstance(item.get("name", ""), str):
                    raise ValueError(f"{where}: key 'models' holds the table {item!r}; a model table has a "
                                     "string 'spec' and an optional string 'name', nothing else"
                                     + (f" (unknown: {', '.join(map(repr, extra))})" if extra else ""))
            elif not isinstance(item, str):
                raise ValueError(f"{where}: key 'models' holds {type(item).__name__} {item!r}; each entry must "
                                 "be a model spec (a string) or a {name = \"...\", spec = \"...\"} table")


def _line_of(text: str | None, key: str) -> str:
    """`` line N`` of ``key = ...`` (bare or quoted) or of a ``[key]`` table header; '' if not found."""
    if not text:
        return ""
    k = re.escape(key)
    # [ \t]* rather than \s*: a match must not start on an earlier blank line
    m = re.search(rf"^[ \t]*(?:{k}|\"{k}\"|'{k}')[ \t]*=|^[ \t]*\[\[?[ \t]*{k}[ \t]*\]", text, flags=re.M)
    return f" line {text.count(chr(10), 0, m.start()) + 1}" if m else ""


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _default_name(spec: str) -> str:
    s = spec.rstrip("/\\")
    return s.replace("\\", "/").split("/")[-1] or spec


def best_device(device: str = "auto") -> torch.device:
    """``auto`` -> the best available device (cuda, then mps, then cpu); anything else -> torch.device."""
    from .models import best_device as available

    return available() if device == "auto" else torch.device(device)


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
    from .extract import effective_max_length, extract_rows, outlier_report
    from .extract.words import check_same_tokens, encode_tokens, encode_words, plan_tokens, plan_words, token_groups
    from .models import load_model

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


def model_pairs(names: list[str], how: str) -> list[tuple[str, str]]:
    """Ordered model pairs to score: ``all`` (a before b) or ``first-vs-rest``."""
    if how == "first-vs-rest":
        return [(names[0], b) for b in names[1:]]
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def score_pairs(
    stacks: dict[str, torch.Tensor],
    pairs: list[tuple[str, str]],
    measures: list[str],
    *,
    unit: str = "sentence",
    permutations: int = 0,
    bootstrap: int = 0,
    groups=None,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = True,
    controls: dict[str, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Score every pair with every measure at all layer pairs; return the tidy frame of DESIGN.md.

    Asymmetric measures are scored in both directions. With ``permutations`` > 0 the frame gets
    ``null_mean``, ``null_std`` and ``p_value``; with ``bootstrap`` > 0, ``ci_low`` and ``ci_high``
    (95 %, resampling whole documents when ``groups`` is given); with ``controls`` (random-init
    stacks keyed by the same model names), ``random_init``: the measure between the controls of
    model_a and model_b at the same layers.
    """
    from tqdm.auto import tqdm

    from .measures import compute, get_measure, with_controls

    jobs: dict[tuple[str, str], list[str]] = {}
    for a, b in pairs:
        for m in measures:
            jobs.setdefault((a, b), []).append(m)
            if not get_measure(m).symmetric:
                jobs.setdefault((b, a), []).append(m)
    frames = []
    for (a, b), names in tqdm(list(jobs.items()), desc="measures", unit="pair", disable=not progress, leave=False):
        X, Y = stacks[a], stacks[b]
        if device is not None:
            X, Y = X.to(device), Y.to(device)
        try:
            if permutations or bootstrap:
                # one call per pair shares Gram matrices, null and bootstrap sums across the measures
                scored = with_controls(names, X, Y, n_permutations=permutations or None,
                                       n_boot=bootstrap or None, groups=groups, seed=seed)
            else:
                scored = {m: compute(m, X, Y) for m in names}
        except ValueError as err:  # name the models: the measure only knows X and Y
            raise ValueError(f"{', '.join(names)} between {a!r} (X) and {b!r} (Y): {err}") from None
        for m in names:
            res = scored[m] if not isinstance(scored[m], torch.Tensor) else None  # None: no controls
            values = (scored[m] if res is None else res.value).double().cpu().numpy()
            la, lb = values.shape
            ia, ib = np.meshgrid(np.arange(la), np.arange(lb), indexing="ij")
            cols = {
                "model_a": a,
                "layer_a": ia.ravel(),
                "model_b": b,
                "layer_b": ib.ravel(),
                "measure": m,
                "value": values.ravel(),
                "n": X.shape[1],
                "d_a": X.shape[2],
                "d_b": Y.shape[2],
                "unit": unit,
            }
            if res is not None and res.null is not None:
                cols["null_mean"] = _np(res.null.mean).ravel()
                cols["null_std"] = _np(res.null.std).ravel()
                cols["p_value"] = _np(res.null.p_value).ravel()
            if controls is not None:
                cx, cy = controls[a], controls[b]
                if device is not None:
                    cx, cy = cx.to(device), cy.to(device)
                cols["random_init"] = compute(m, cx, cy).double().cpu().numpy().ravel()
            if res is not None and res.ci is not None:
                cols["ci_low"] = _np(res.ci.low).ravel()
                cols["ci_high"] = _np(res.ci.high).ravel()
            frames.append(pd.DataFrame(cols))
    frame = pd.concat(frames, ignore_index=True)
    for c in ("layer_a", "layer_b", "n", "d_a", "d_b"):
        frame[c] = frame[c].astype("int64")
    return frame


def _np(t) -> np.ndarray:
    return t.double().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=float)


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
    from .corpora import load_corpus
    from .measures import get_measure
    from .report import write_outputs

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
            from .extract.words import plan_words

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
                from .models import random_init_like

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
    from .extract.store import atomic_write_bytes

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
    from ._paths import homoscope_home

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
    from .models import load_model

    return load_model(spec, device=device, dtype=DTYPES[study.dtype], trust_remote_code=study.trust_remote_code,
                      auto_install=study.install, name=name)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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
    from .agreement import run_agreement

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
    from .models import resolve

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
