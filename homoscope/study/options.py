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

Each option is declared once, as a field of :class:`Study` made by :func:`option` (type from the
annotation, default, help, allowed choices or bounds, CLI flag). :data:`OPTIONS` lists them; the
TOML checks (:meth:`Study.from_dict`), the value checks (:meth:`Study.validate`), the docstring of
:class:`Study` and the command line's study options (:mod:`homoscope.cli`) are all made from it.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import numbers
import os
import re
import shlex
import tempfile
import tomllib
import typing
import warnings
from types import NoneType, UnionType
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._spelling import brief, shown, typed
from ..extract.runner import POOLINGS
from ..extract.words import DEFAULT_MAX_ROWS, PUNCTUATION, ROW_POOLINGS, SPECIAL_TOKENS
from ..measures.controls import MIN_BOOTSTRAP_GROUPS
from ..models.fingerprint import FINGERPRINTS

PACKAGED_DEMO_MODELS = ("minilm-l6", "mpnet-base", "smollm2-135m", "gemma3-270m")
DEFAULT_MEASURES = ("linear_cka", "debiased_cka")
UNITS = ("sentence", "word", "token")
#: what a row of each unit is called in messages
ROWS_CALLED = {"sentence": "texts", "word": "words", "token": "tokens"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PAIRS = ("all", "first-vs-rest")
AGREEMENT_MODES = ("auto", "on", "off")
EXECUTORS = ("local", "ray")
#: options that say where the work runs, not what it computes: outside the run id, so both executors give one id
EXECUTION_OPTIONS = ("executor", "ray_address", "gpus_per_model", "cpus_per_model", "replicas")


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
    there). ``what`` is the option (``out``, ``store``; the message names it as typed) and ``hint`` says
    what to do instead. The check creates and removes one empty temporary file.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{typed(what, str(folder))}: {str(probe)!r} is a file, not a folder; {hint}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".homoscope-write-check-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        where = "" if probe == folder else f" (checked at {str(probe)!r}, where it would be created)"
        raise ValueError(f"{typed(what, str(folder))} is not writable{where}: {_os_reason(err)}; {hint}") from None


def _plain(v):
    """``v`` as the plain values TOML and JSON write: paths as strings, tuples as lists, numpy scalars as
    Python numbers."""
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v.item() if isinstance(v, np.generic) else v


# ------------------------------------------------------------------------------------- the schema
@dataclass(frozen=True)
class Option:
    """One study option: a :class:`Study` field, a key of the study file and a command-line flag.

    Attributes:
        name: the field name and TOML key (``shard_size``).
        types: the Python types a value may have, from the field's annotation (``float`` also takes int).
        optional: whether the annotation allows None (the option may be left unset).
        default: the value of an option not given (a tuple stands for a fresh list).
        help: what the option does, in one line (``--help`` and the docstring).
        details: more for the docstring, not shown by ``--help``.
        choices: the allowed values, or None.
        minimum, maximum: numeric bounds, inclusive unless ``exclusive``; None = unbounded.
        also: values allowed outside the bounds, each with what it means (``{0: "off"}``), or None.
        flag: the command-line spelling (``--shard-size``), or None for an option only a study file sets.
    """

    name: str
    types: tuple
    optional: bool
    default: Any
    help: str
    details: str = ""
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive: bool = False
    also: dict | None = None
    flag: str | None = None

    @property
    def type_names(self) -> str:
        """``'int'``, ``'float/int'``: the accepted types as a study file's error names them."""
        return "/".join(t.__name__ for t in self.types)

    @property
    def rule(self) -> str:
        """What a value must be, in words: ``'an integer >= 1'``, ``'one of all, first-vs-rest'``."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        kind = "a number" if float in self.types else {int: "an integer", bool: "true or false", list: "a list",
                                                        str: "a string"}[self.types[0]]
        low, high, strictly = self.minimum, self.maximum, "strictly " if self.exclusive else ""
        num = lambda v: f"{int(v):,}" if float(v).is_integer() else f"{v:g}"  # noqa: E731
        extra = "".join(f"{num(v)} ({meaning}) or " for v, meaning in (self.also or {}).items())
        if low is not None and high is not None:
            return f"{extra}{kind} {strictly}between {num(low)} and {num(high)}"
        if low == 0 and kind == "an integer" and not self.exclusive:
            return f"{extra}a non-negative integer"
        if low is not None or high is not None:
            sign = (">" if low is not None else "<") + ("" if self.exclusive else "=")
            return f"{extra}{kind} {sign} {num(low if low is not None else high)}"
        return extra + kind

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has one of the option's types (a bool is not an int here; None if optional)."""
        if value is None:
            return self.optional
        if str in self.types and isinstance(value, os.PathLike):
            return True
        if int in self.types and isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            return True
        if bool in self.types and isinstance(value, np.bool_):
            return True
        return isinstance(value, self.types) and (bool in self.types or not isinstance(value, bool))

    def check(self, value: Any, label: str | None = None) -> None:
        """Raise ValueError ``'{label}={value!r} ...'`` unless ``value`` has the option's type, choices and bounds.

        ``label`` names the option where it is read from a study file (the key, with the file and line);
        without it the option is named as the user typed it (:func:`~homoscope._spelling.typed`: the
        keyword, or the flag on the command line). Entries of a list are checked where they are read.
        """
        problem = self._problem(value)
        if problem:
            raise ValueError(f"{label}={brief(value)} {problem}" if label else f"{typed(self.name, value)} {problem}")

    def _problem(self, value: Any) -> str:
        """What is wrong with ``value`` (``'is not one of ...'``, ``'must be ...'``); '' if nothing."""
        if value is None and self.optional:
            return ""
        # "(or omitted)" only where leaving the option out leaves it unset (its default is None)
        unset = " (or omitted)" if self.optional and self.default is None else ""
        if not self.accepts(value):
            return f"must be {self.rule}{unset}"
        if self.choices is not None:
            return "" if value in self.choices else f"is not {self.rule}"
        if (self.minimum is not None or self.maximum is not None) and not self._within(value):
            return f"must be {self.rule}{unset}"
        return ""

    def _within(self, value: Any) -> bool:
        """Whether ``value`` is a number of this option's type within its bounds or one of ``also`` (NaN never
        is)."""
        if value is None or not self.accepts(value):
            return False
        if self.also and any(value == v for v in self.also):
            return True
        low, high = self.minimum, self.maximum
        above = low is None or (value > low if self.exclusive else value >= low)
        below = high is None or (value < high if self.exclusive else value <= high)
        return bool(above and below)

    def parse(self, text: str, label: str | None = None) -> Any:
        """The value of the command-line ``text`` (``'4096'``, ``'a,b'``), checked like :meth:`check`.

        Raises ValueError naming ``label`` (default: the flag) and the text as typed, then the rule:
        ``--shard-size=0 must be an integer >= 1``.
        """
        typed = f"{label or self.flag or self.name}={shlex.quote(text)}"
        kind = self.types[0]
        if kind is list:
            value: Any = [x.strip() for x in text.split(",") if x.strip()]
            if not value:
                raise ValueError(f"{typed} names nothing; give comma-separated names")
        elif kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(f"{typed} must be true or false")
            value = text.lower() == "true"
        elif kind in (int, float):
            try:
                value = kind(text)
            except ValueError:
                raise ValueError(f"{typed} must be {self.rule}") from None
        else:
            value = text
        problem = self._problem(value)
        if problem:
            raise ValueError(f"{typed} {problem}")
        return value

    def show(self, value: Any) -> str:
        """``value`` as it is typed on the command line: ``'linear_cka,debiased_cka'``, ``'on'``, ``'4096'``."""
        return shown(value)


def option(default: Any, help: str, *, details: str = "", choices=None, minimum: float | None = None,
           maximum: float | None = None, exclusive: bool = False, also: dict | None = None,
           flag: bool | str = True) -> Any:
    """Declare one :class:`Study` field as an option; the arguments are those of :class:`Option`.

    ``flag``: True gives ``--`` and the name with dashes, a string another spelling, False keeps
    the option off the command line. A tuple ``default`` gives each study its own list.
    """
    spec = {"help": help, "details": details, "choices": None if choices is None else tuple(choices),
            "minimum": minimum, "maximum": maximum, "exclusive": exclusive, "also": also, "flag": flag}
    if isinstance(default, tuple):
        return field(default_factory=lambda: list(default), metadata={"option": spec})
    return field(default=default, metadata={"option": spec})


def _collect(cls) -> tuple[Option, ...]:
    """The :class:`Option` of each field of ``cls``, in field order, typed by the field's annotation."""
    hints = typing.get_type_hints(cls)
    result = []
    for f in dataclasses.fields(cls):
        spec = dict(f.metadata["option"])
        hint = hints[f.name]
        parts = typing.get_args(hint) if isinstance(hint, UnionType) else (hint,)
        kinds = tuple(typing.get_origin(t) or t for t in parts if t is not NoneType)
        if float in kinds and int not in kinds:
            kinds += (int,)  # TOML and people write 1 for 1.0
        default = tuple(f.default_factory()) if f.default is dataclasses.MISSING else f.default
        flag = spec.pop("flag")
        flag = "--" + f.name.replace("_", "-") if flag is True else (flag or None)
        result.append(Option(name=f.name, types=kinds, optional=NoneType in parts, default=default, flag=flag,
                             **spec))
    return tuple(result)


def _attributes_doc(options: tuple[Option, ...]) -> str:
    """The ``Attributes:`` section of :class:`Study`'s docstring: each option's help, rule and default."""
    import textwrap

    lines = ["", "    Attributes:"]
    for o in options:
        text = f"{o.name}: {o.help}." + (f" {o.details}" if o.details else "")
        if o.choices is not None or o.minimum is not None or o.maximum is not None:
            text += f" {o.rule[0].upper()}{o.rule[1:]}."
        if o.default is not None:
            text += f" Default: ``{json.dumps(_plain(o.default))}``."
        lines += textwrap.wrap(text, 108, initial_indent=" " * 8, subsequent_indent=" " * 12,
                               break_on_hyphens=False)
    return "\n".join(lines) + "\n"


@dataclass
class Study:
    """Configuration of one study. Field names are the TOML keys; the CLI flags are the names with dashes.

    Each field is one option declared with :func:`option` (:data:`OPTIONS` lists them). Build a study
    with keywords (``Study(models=["a", "b"], unit="word")``), from a study file (:meth:`from_toml`)
    or a mapping (:meth:`from_dict`); :meth:`validate` checks it before a run.
    """

    models: list = option(PACKAGED_DEMO_MODELS, "model specs (packaged name, local HF folder, hub id), or "
                          "{name, spec} tables", flag=False)
    out: str = option("homoscope-out", "output folder")
    corpus: str = option("bbc", "'bbc' (BBC News sentences) or a .txt/.jsonl/.csv file")
    sentences: int | None = option(1000, "texts sampled from the corpus (0 = every text)", minimum=4,
                                   also={0: "every text"},
                                   details="0 (or None in Python) takes every text of the corpus.")
    seed: int = option(0, "sampling / permutation / bootstrap seed", minimum=0, maximum=2**32 - 1)
    text_column: str = option("text", "text column of a .jsonl/.csv corpus")
    label_column: str | None = option(None, "label column of a .jsonl/.csv corpus")
    doc_column: str | None = option(None, "document id column of a .jsonl/.csv corpus")
    measures: list[str] = option(DEFAULT_MEASURES, "measure names (see 'homoscope measures')",
                                 details="Names from ``homoscope.measures.list_measures()``.")
    unit: str = option("sentence", "unit of a row: sentence (one pooled row per text), word (aligned across "
                       "tokenizers through character offsets) or token (identical tokenizers only)", choices=UNITS)
    pooling: str = option("mean", "pooling over a text's tokens: mean, first, last or cls; over a word's tokens: "
                          "mean, first or last (Wu et al. 2020); unused for tokens", choices=POOLINGS)
    punctuation: str = option("attach", "word rule: attach (whitespace words, punctuation kept on them) or split "
                              "(punctuation marks are words of their own)", choices=PUNCTUATION)
    max_rows: int = option(DEFAULT_MAX_ROWS, "word/token units: rows kept, a seeded sample (0 = all)", minimum=0)
    special_tokens: str = option("exclude", "exclude or include special positions (BOS/CLS/SEP) as token rows and "
                                 "in sentence pooling", choices=SPECIAL_TOKENS, details="Words never contain them.")
    outliers: bool = option(True, "report per layer the top dimension's variance share and the largest-norm row")
    max_length: int = option(128, "tokens per text, special tokens included (longer texts are truncated)",
                             minimum=4, details="At least 4: room for two special tokens (CLS and SEP, or BOS and "
                                                "EOS) and two tokens of text; a model whose special tokens leave "
                                                "no room for text is refused before its extraction.")
    dtype: str = option("float32", "dtype of the forward pass", choices=tuple(DTYPES),
                        details="Pooled vectors are always float32 and measures accumulate in float64.")
    device: str = option("auto", "auto (cuda, then mps, then cpu) | cpu | cuda | cuda:1 | mps")
    executor: str = option("local", "where the work runs: local (this process) or ray (a Ray cluster: an actor per "
                           "model replica takes shards, a task per block of layer pairs scores)", choices=EXECUTORS,
                           details="Both give the same numbers and the same run id; Ray is the optional extra "
                                   "``pip install \"homoscope[ray]\"``. See :mod:`homoscope.study.distributed`.")
    ray_address: str | None = option(None, "the Ray cluster to join with executor=ray: auto (the running one), "
                                     "HOST:PORT or ray://HOST:PORT; unset: start one on this machine",
                                     details="On a cluster the store must be a folder every node sees at the same "
                                             "path (a shared filesystem), checked before any model loads.")
    gpus_per_model: float = option(0.0, "GPUs each model replica's Ray actor holds (a fraction shares a GPU among "
                                   "small models; 0: CPU); scoring tasks take as many, at most 1", minimum=0)
    cpus_per_model: float = option(1.0, "CPU cores each model replica's Ray actor holds; it computes with that many "
                                   "torch threads (a fraction lets replicas share a core, each with one thread)",
                                   minimum=0.01)
    replicas: int = option(0, "the most Ray actors that hold one model at once, each taking its shards in turn (0: as "
                           "many as are free)", minimum=0,
                           details="A free actor first opens a model no actor has started; once every model is "
                                   "started it joins the model with the most shards left (at least two): one more "
                                   "load of that model, and no idle workers at the end.")
    batch_tokens: int = option(0, "padded tokens per forward pass (0 = suited to the device)", minimum=0)
    shard_size: int = option(4096, "texts per stored shard (words or tokens per shard for those units): a killed "
                             "run loses at most one shard", minimum=1,
                             details="Each model's representations are extracted and stored one shard at a time "
                                     "(rows keep corpus order); word and token shards are cut between texts.")
    memory_mb: int = option(512, "memory budget of streamed scoring in MiB: layer pairs are scored in blocks",
                            minimum=64, details="The layer pairs of a model pair are scored in blocks whose sums "
                                                "fit in it.")
    pairwise_rows: int = option(1024, "row cap of the n x n measures, of their controls and of the drawn "
                                "permutation nulls; above it a seeded subsample", minimum=16,
                                details="The n x n measures are ``rbf_cka``, ``mutual_knn``, ``cknna``, ``rsa`` and "
                                        "``minibatch_cka``; the frame's ``n`` says how many rows a score used, "
                                        "``control_n`` how many the drawn controls used. The default, 1,024 rows, "
                                        "is the sample size of Huh et al. 2024 for mutual kNN and keeps the "
                                        "controls' memory flat in n (their n x n matrices are the largest).")
    permutations: int = option(0, "permutation-null draws per cell (0 = off)", minimum=2, also={0: "off"},
                               details="A spread needs two draws.")
    bootstrap: int = option(0, "bootstrap resamples for intervals (0 = off)", minimum=2, also={0: "off"},
                            details="A spread needs two resamples.")
    bootstrap_groups: int = option(32, "above pairwise_rows: the bootstrap resamples at most this many groups of "
                                   "rows, each replicate exact on all rows", minimum=MIN_BOOTSTRAP_GROUPS,
                                   details="Groups are the corpus's documents, bundled into this many runs of "
                                           "consecutive documents where there are more (runs of consecutive rows "
                                           "without documents). Streamed scoring keeps one set of sums per group: "
                                           "its memory and time grow with this number.")
    pairs: str = option("all", "all model pairs, or first-vs-rest (the first model against each other)",
                        choices=PAIRS)
    random_init: bool = option(False, "also run each architecture with random weights as a control",
                               details="The same measure between the random-init copies goes in the frame's "
                                       "``random_init`` column (the control of DESIGN.md).")
    agreement: str = option("auto", "linear probes, prediction agreement and outcome homogenization: auto (when the "
                            "corpus has labels and document ids and the unit is sentence), on (an error if it "
                            "cannot run) or off", choices=AGREEMENT_MODES)
    probe_test_size: float = option(0.3, "share of documents held out for the probes' test split", minimum=0,
                                    maximum=1, exclusive=True)
    store: str | None = option(None, "representation store folder (default: the homoscope cache); the weight "
                               "fingerprints' cache goes there too")
    fingerprint: str = option("stat", "how a model's weight files are known unchanged: stat (a sha256 cached with each "
                              "file's path, size, times and inode) or content (every file hashed again on each run)",
                              choices=FINGERPRINTS,
                              details="``stat`` reuses a file's cached sha256 while its absolute path, size, "
                                      "modification and change times (ns) and inode stay the same (a write moves "
                                      "the change time); ``content`` reads every weight file on each run (about "
                                      "as long as loading the weights) and refreshes the cache. See "
                                      ":mod:`homoscope.models.fingerprint`.")
    install: bool = option(False, "install missing packaged models first")
    trust_remote_code: bool = option(False, "allow code shipped with a model folder to run")
    name: str = option("homoscope study", "study title used in the report")

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every option before anything is loaded; nothing is read but the file system's entries.

        Raises ValueError naming the option as the user typed it (:func:`~homoscope._spelling.typed`:
        the keyword or study-file key, or the flag on the command line), its value and the rule it
        breaks. Each option's own rule (type, choices, bounds) comes from :data:`OPTIONS`; then the rules
        that span options or look at this machine: the models (each a spec or a ``{name, spec}`` table of
        strings, names distinct), the measures, the pooling of words, ``batch_tokens`` against
        ``max_length``, the device, the folders (``out``, ``store``: not files) and the corpus (``bbc`` or
        an existing .txt/.jsonl/.csv file). Paths and specs must be valid UTF-8: they are written to the
        study file and the manifest.
        """
        for opt in OPTIONS:
            value = getattr(self, opt.name)
            if isinstance(value, np.generic):  # numpy's numbers are taken as the Python numbers they hold
                setattr(self, opt.name, value.item())
            opt.check(getattr(self, opt.name))
        self._check_models()
        self._check_measures()
        if self.unit == "word" and self.pooling not in ROW_POOLINGS:
            raise ValueError(f"{typed('pooling', self.pooling)} does not apply to {typed('unit', 'word')}; pool a "
                             f"word's tokens with {', '.join(ROW_POOLINGS)}")
        if self.batch_tokens and self.batch_tokens < self.max_length:
            raise ValueError(f"{typed('batch_tokens', self.batch_tokens)} must be 0 (suited to the device) or at "
                             f"least {typed('max_length', self.max_length)}, so that a text fits in a batch")
        _check_device(self.device, here=self.executor == "local")
        self._check_executor()
        self._check_paths()

    def _check_executor(self) -> None:
        """Ray importable for ``executor='ray'`` (found, not imported); a warning for a ``ray_address`` that a local
        run leaves unused."""
        import importlib.util

        if self.executor == "local":
            defaults = {o.name: o.default for o in OPTIONS}
            for name in EXECUTION_OPTIONS[1:]:
                value = getattr(self, name)
                if value != defaults[name]:
                    warnings.warn(f"{typed(name, value)} is unused: the study runs here ({typed('executor', 'local')}); "
                                  f"set {typed('executor', 'ray')} to run it on Ray", RuntimeWarning, stacklevel=3)
            return
        if importlib.util.find_spec("ray") is None:
            raise ValueError(f"{typed('executor', 'ray')} needs Ray, which is not installed: "
                             "pip install \"homoscope[ray]\"")
        if self.device.startswith("cuda") and not self.gpus_per_model:
            raise ValueError(f"{typed('device', self.device)} on Ray needs GPUs for the replicas: set "
                             f"{typed('gpus_per_model')} (1, or a fraction to share one), or {typed('device', 'auto')}")
        if self.ray_address is not None and not re.fullmatch(r"auto|(ray://)?[^\s:/]+:\d{1,5}", self.ray_address):
            raise ValueError(f"{typed('ray_address', self.ray_address)} is not auto, HOST:PORT or ray://HOST:PORT; leave "
                             "it out to start a cluster on this machine")

    def _check_paths(self) -> None:
        """``out``, ``store`` and ``corpus``: not blank, valid UTF-8; the folders not files; the corpus a file."""
        for name in ("out", "store", "corpus"):
            value = getattr(self, name)
            if value is None:
                continue
            if not os.fspath(value).strip():
                raise ValueError(f"{typed(name, value)} is empty; give a folder or file name"
                                 + (" or leave it out" if name == "store" else ""))
            _check_utf8(name, os.fspath(value))
        for name, what in (("out", "the study's outputs"), ("store", "the representation store")):
            value = getattr(self, name)
            if value is not None and Path(value).exists() and not Path(value).is_dir():
                raise ValueError(f"{typed(name, os.fspath(value))} is a file; give a folder for {what}")
        if os.fspath(self.corpus).strip().lower() != "bbc":
            from ..corpora._files import check_path

            check_path(self.corpus)

    def _check_models(self) -> None:
        """At least two models, each a spec or ``{name, spec}`` table of strings (valid UTF-8), names distinct."""
        if not isinstance(self.models, list) or len(self.models) < 2:
            raise ValueError(f"{typed('models', self.models)}: a study needs at least two models")
        specs = self.model_specs()
        for name, spec in specs:
            _check_utf8("models", spec)
            _check_utf8("models", name)
        names = [n for n, _ in specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                f"{typed('models')}: the name(s) {', '.join(map(repr, dup))} appear more than once; give each model "
                "a distinct name (in TOML: {name = \"...\", spec = \"...\"})"
            )

    def _check_measures(self) -> None:
        """A non-empty list of known measure names, each named once."""
        from ..measures import list_measures

        valid, label = list_measures(), typed("measures")
        if not self.measures:
            raise ValueError(f"{label} is empty: name at least one of " + ", ".join(valid))
        if not isinstance(self.measures, list):
            raise ValueError(f"{typed('measures', self.measures)} must be a list of measure names")
        for m in self.measures:
            if not isinstance(m, str):
                raise ValueError(f"{label}: {brief(m)} is not a known measure; valid: {', '.join(valid)}")
        twice = sorted({m for m in self.measures if self.measures.count(m) > 1})
        if twice:
            raise ValueError(f"{label}: {', '.join(map(repr, twice))} named more than once; name each measure once")
        for m in self.measures:
            if m not in valid:
                raise ValueError(f"{label}: {m!r} is not a known measure; valid: {', '.join(valid)}"
                                 f"{_did_you_mean(str(m), valid)}")

    def model_specs(self) -> list[tuple[str, str]]:
        """(display name, spec) for every model; a plain spec is named by its last path part.

        Raises ValueError for an entry that is neither a spec nor a ``{name, spec}`` table of strings.
        """
        result = []
        for m in self.models:
            problem = _model_entry_problem(m)
            if problem:
                raise ValueError(f"{typed('models')} holds {problem}")
            spec = m["spec"] if isinstance(m, dict) else m
            name = m.get("name") if isinstance(m, dict) else None
            result.append((name or _default_name(spec), spec))
        return result

    def to_toml(self) -> str:
        """The study as TOML that :meth:`from_toml` reads back (options set to None are left out;
        ``sentences = None``, every text, is written as 0)."""
        import tomli_w

        data = {}
        for opt in OPTIONS:
            v = getattr(self, opt.name)
            if opt.name == "sentences" and v is None:
                v = 0
            if v is not None:
                data[opt.name] = _plain(v)
        return tomli_w.dumps(data)

    @classmethod
    def from_toml(cls, path: str | Path) -> "Study":
        """Read a study file. Raises ValueError naming the key and line for unknown keys or wrong types."""
        data, text = read_study_file(path)
        return cls.from_dict(data, source=str(path), text=text)

    @classmethod
    def from_dict(cls, data: dict, source: str = "study", text: str | None = None) -> "Study":
        """Build a study from a mapping, checking each key, its type, its entries and its value.

        Raises ValueError naming ``source``, the key's line in ``text`` (where given), the key as
        written and the rule it breaks; an unknown key gets the likely one it meant.
        """
        options = {o.name: o for o in OPTIONS}
        for key, value in data.items():
            where = f"{source}{_line_of(text, str(key))}"
            opt = options.get(key)
            if opt is None:
                raise ValueError(f"{where}: unknown key {key!r}{_did_you_mean(str(key), options)}; valid keys: "
                                 f"{', '.join(sorted(options))}")
            if not opt.accepts(value):
                raise ValueError(f"{where}: key {key!r} must be {opt.type_names}, got {type(value).__name__} "
                                 f"{value!r}")
            _check_entries(key, value, where)
            opt.check(value, f"{where}: {key}")
        if "models" not in data and text is not None:
            raise ValueError(f"{source}: missing key 'models' (a list of model specs)")
        return cls(**data)


def read_study_file(path: str | Path) -> tuple[dict, str]:
    """The table of a study file (its keys at the top, or under one ``[study]`` table) and the file's text.

    Raises ValueError for a file that does not exist or is not valid TOML.
    """
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
    return data, text


OPTIONS: tuple[Option, ...] = _collect(Study)
"""Every study option, in the order of :class:`Study`'s fields."""
Study.__doc__ = (Study.__doc__ or "").rstrip() + "\n" + _attributes_doc(OPTIONS) + "    "


def _did_you_mean(key: str, names) -> str:
    """`` (did you mean 'sentences'?)``: the names that contain ``key`` (``cka`` -> the CKA measures), else
    the closest of ``names`` to it; '' if none is close."""
    import difflib

    names = list(names)
    within = [n for n in names if len(key) >= 3 and key.lower() in n.lower() and n != key][:5]
    if len(within) > 1:
        return f" (did you mean one of {', '.join(map(repr, within))}?)"
    close = within or difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_device(device: str, here: bool = True) -> None:
    """Raise ValueError unless ``device`` is ``auto`` or a torch device (``here``: available on this machine;
    a Ray cluster's workers check their own)."""
    if device == "auto":
        return
    given, instead = typed("device", device), f"set {typed('device')} to auto or cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{given} is not a torch device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{given}: homoscope runs on cpu, cuda or mps")
    if not here:  # a Ray cluster's workers check what they have
        return
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"{given} is not available here ({torch.cuda.device_count()} CUDA devices); {instead}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{given} is not available here; {instead}")


def _check_entries(key: str, value, where: str) -> None:
    """The entries of the list keys: ``models`` holds specs or ``{name, spec}`` tables, ``measures`` names."""
    if key == "measures":
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"{where}: key 'measures' holds {type(item).__name__} {item!r}; "
                                 "each entry must be a measure name (a string)")
    elif key == "models":
        for item in value:
            problem = _model_entry_problem(item)
            if problem:
                raise ValueError(f"{where}: key 'models' holds {problem}")


def _model_entry_problem(item) -> str:
    """What is wrong with one entry of ``models`` (``"the table {...}; a model table has ..."``); '' if nothing.

    An entry is a spec (a string) or a table with a string ``spec`` and an optional string ``name``.
    """
    if isinstance(item, dict):
        extra = sorted(map(str, set(item) - {"name", "spec"}))
        if extra or not isinstance(item.get("spec"), str) or not isinstance(item.get("name", ""), str):
            return (f"the table {item!r}; a model table has a string 'spec' and an optional string 'name', "
                    "nothing else" + (f" (unknown: {', '.join(map(repr, extra))})" if extra else ""))
        return ""
    if not isinstance(item, str):
        return (f"{type(item).__name__} {item!r}; each entry must be a model spec (a string) or a "
                "{name = \"...\", spec = \"...\"} table")
    return ""


def _check_utf8(name: str, text: str) -> None:
    """Raise ValueError unless ``text`` (a path or spec of option ``name``) is valid UTF-8: a file name whose
    bytes are not reaches Python with stand-ins that cannot be written to the study file or the manifest."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{typed(name)}: {text!r} is not valid UTF-8 (its bytes do not decode); rename it with "
                         "a UTF-8 name") from None


def _line_of(text: str | None, key: str) -> str:
    """`` line N`` of ``key = ...`` (bare or quoted) or of a ``[key]`` table header; '' if not found."""
    if not text:
        return ""
    k = re.escape(key)
    # [ \t]* rather than \s*: a match must not start on an earlier blank line
    m = re.search(rf"^[ \t]*(?:{k}|\"{k}\"|'{k}')[ \t]*=|^[ \t]*\[\[?[ \t]*{k}[ \t]*\]", text, flags=re.M)
    return f" line {text.count(chr(10), 0, m.start()) + 1}" if m else ""


def _default_name(spec: str) -> str:
    """A model's display name from its spec: the last part of the path or hub id (``<name> (decoder)`` for a
    ``decoder:<spec>``)."""
    from ..models.stacks import split_stack

    stack, inner = split_stack(spec)
    if stack:
        return f"{_default_name(inner)} ({stack})"
    s = spec.rstrip("/\\")
    return s.replace("\\", "/").split("/")[-1] or spec


def best_device(device: str = "auto") -> torch.device:
    """``auto`` -> the best available device (cuda, then mps, then cpu); anything else -> torch.device."""
    from ..models import best_device as available

    return available() if device == "auto" else torch.device(device)


