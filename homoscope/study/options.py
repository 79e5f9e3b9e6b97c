"""The study's options: the :class:`Study` schema, its validation and its TOML form.

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
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..extract.runner import POOLINGS
from ..extract.words import DEFAULT_MAX_ROWS, PUNCTUATION, ROW_POOLINGS, SPECIAL_TOKENS

PACKAGED_DEMO_MODELS = ("minilm-l6", "mpnet-base", "smollm2-135m", "gemma3-270m")
DEFAULT_MEASURES = ("linear_cka", "debiased_cka")
UNITS = ("sentence", "word", "token")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PAIRS = ("all", "first-vs-rest")
AGREEMENT_MODES = ("auto", "on", "off")


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
        shard_size: texts per shard: each model's representations are extracted and stored one shard
            at a time (rows keep corpus order), so a killed run loses at most the shard in flight.
        memory_mb: memory budget (MiB) of streamed scoring: the layer pairs of a model pair are
            scored in blocks whose sums fit in it.
        pairwise_rows: row cap of the measures that need ``n x n`` matrices (``rbf_cka``,
            ``mutual_knn``, ``cknna``, ``rsa``, ``minibatch_cka``) and of Monte-Carlo nulls and
            bootstraps; above it they use a seeded subsample of this many rows (the frame's ``n``
            says which).
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
    shard_size: int = 4096
    memory_mb: int = 1024
    pairwise_rows: int = 4096
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
        from ..measures import list_measures

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
        for key, low in (("shard_size", 1), ("memory_mb", 64), ("pairwise_rows", 16)):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{key}={v!r} must be an integer >= {low}")
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
    "shard_size": (int,),
    "memory_mb": (int,),
    "pairwise_rows": (int,),
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
    from ..models import best_device as available

    return available() if device == "auto" else torch.device(device)


