"""Models that are not ``transformers`` classes: the adapter interface.

homoscope measures any torch module that says three things:

1. **how text becomes units** with character offsets: a fast (``tokenizers``-backed) tokenizer, as for every
   other model. :func:`character_tokenizer` builds one for a character-level model;
2. **how it runs**: ``layers(input_ids, attention_mask)`` returns every layer's states, ``L + 1`` float tensors
   ``[batch, units, d]`` (layer 0 the input embedding, then one per block), for right- or left-padded int64
   ``input_ids`` ``[batch, units]`` whose real units have mask 1; a real unit's state must not depend on the
   pads (the runner's padding tests check it);
3. **what it is**: a :class:`ModuleConfig` (kind, blocks ``L``, width ``d``, vocabulary, the class's own
   options), from which the class builds itself: ``type(model)(config)`` under a seed is the random-init
   control.

Subclass :class:`LayeredModule`, implement ``layers`` and ``__init__(config)``, and the probe runner, word
alignment (through the tokenizer's offsets), the store and the controls take it unchanged: wrap an instance
with :func:`homoscope.models.from_module`. A class registered with :func:`register_module` can also be saved
as a model folder (:func:`save_module`: ``config.json`` naming the class, ``model.safetensors``, the
tokenizer) that any study loads by path; a folder names a class of this registry, so loading one never runs
code from the folder.

A class may set ``word_pooling`` (``first`` or ``last``): the unit that stands for a word in word rows, in
place of the study's pooling over the word's units (Flair's rule for character language models: the forward
model's state after the word's last character, the backward model's at its first).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

#: The registered module classes, by the name their folders' ``config.json`` gives as ``homoscope_module``.
MODULES: dict[str, type[LayeredModule]] = {}
#: The key of ``config.json`` that marks a folder of a registered module class.
MODULE_KEY = "homoscope_module"
#: Kinds a module may declare: as for transformers models, and ``recurrent`` for RNN language models.
MODULE_KINDS = ("encoder", "decoder", "recurrent")


@dataclass
class ModuleConfig:
    """What a :class:`LayeredModule` is; the same attribute names as a ``transformers`` config where they
    mean the same thing, so the code that reads shapes from a config reads these too.

    Attributes:
        module: the registered class name (:data:`MODULES`).
        kind: ``encoder``, ``decoder`` or ``recurrent`` (:data:`MODULE_KINDS`).
        num_hidden_layers: blocks ``L`` (the module returns ``L + 1`` layers).
        hidden_size: width ``d`` of every returned layer.
        vocab_size: size of the unit vocabulary (token ids lie in ``[0, vocab_size)``).
        max_position_embeddings: the longest input in units, or None where there is no limit.
        options: the class's own settings (JSON values).
    """

    module: str
    kind: str
    num_hidden_layers: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int | None = None
    options: dict = field(default_factory=dict)
    is_encoder_decoder: ClassVar[bool] = False

    def __post_init__(self):
        if not isinstance(self.module, str) or not self.module:
            raise ValueError(f"module={self.module!r} must be the name of a registered module class")
        if not isinstance(self.options, dict):
            raise ValueError(f"options={self.options!r} must be a table of the class's settings")
        limit = self.max_position_embeddings
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ValueError(f"max_position_embeddings={limit!r} must be a positive integer or null")
        if self.kind not in MODULE_KINDS:
            raise ValueError(f"kind={self.kind!r} must be one of {', '.join(MODULE_KINDS)}")
        for name in ("num_hidden_layers", "hidden_size", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name[0] == "n" else 1):
                raise ValueError(f"{name}={value!r} must be a positive integer")

    @property
    def model_type(self) -> str:
        """The class's registered name, as a report shows a model's architecture."""
        return self.module

    def to_dict(self) -> dict:
        """The config as JSON values (``config.json`` of a saved folder, with :data:`MODULE_KEY` for ``module``)."""
        d = dataclasses.asdict(self)
        return {MODULE_KEY: d.pop("module"), **d}

    def to_json_string(self, use_diff: bool = False) -> str:
        """Canonical JSON of :meth:`to_dict` (the store key's config digest reads it)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ModuleConfig:
        """The config a ``config.json`` holds. Raises ValueError for a missing or unknown key."""
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)} - {"module"}
        extra = sorted(set(d) - known - {MODULE_KEY})
        if extra:
            raise ValueError(f"config has keys a module config does not take: {', '.join(extra)}")
        try:
            return cls(module=d.pop(MODULE_KEY), **d)
        except (KeyError, TypeError) as err:
            raise ValueError(f"config is not a module config ({err})") from None


@dataclass
class LayerOutput:
    """What a :class:`LayeredModule` returns: the ``L + 1`` layers, as a transformers model's output holds them."""

    hidden_states: tuple[torch.Tensor, ...]


class LayeredModule(nn.Module):
    """Base class of a torch module homoscope measures (the adapter interface; see the module docstring).

    Subclasses implement ``__init__(self, config)`` (calling ``super().__init__(config)``) and :meth:`layers`.
    ``forward`` takes what the probe runner passes a transformers model and returns :class:`LayerOutput`.
    """

    #: ``first`` or ``last``: the unit that stands for a word in word rows (None: the study's pooling).
    word_pooling: ClassVar[str | None] = None

    def __init__(self, config: ModuleConfig):
        super().__init__()
        self.config = config

    def layers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's states, ``L + 1`` float tensors ``[batch, units, d]`` for int64 ``input_ids`` and
        ``attention_mask`` ``[batch, units]`` (1 on real units, right or left padded)."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = True, return_dict: bool = True) -> LayerOutput:
        """Run :meth:`layers` and check what it returns. Raises ValueError for a wrong number or shape of layers."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self.layers(input_ids, attention_mask)
        if not isinstance(states, (list, tuple)) or not all(torch.is_tensor(s) and s.is_floating_point()
                                                            for s in states):
            raise ValueError(f"{type(self).__name__}.layers returned {type(states).__name__}; a list of real "
                             "floating-point tensors (one per layer) is expected")
        want = self.config.num_hidden_layers + 1
        shape = (*input_ids.shape, self.config.hidden_size)
        if len(states) != want or any(tuple(s.shape) != shape for s in states):
            got = [tuple(s.shape) for s in states]
            raise ValueError(f"{type(self).__name__}.layers returned {len(states)} layers of shapes {got[:3]}; "
                             f"the config states {want} layers of shape {shape}")
        return LayerOutput(hidden_states=tuple(states))


def register_module(name: str):
    """Class decorator: register a :class:`LayeredModule` subclass under ``name`` (a folder's ``config.json``
    names it). Raises ValueError for a name taken by another class."""
    def deco(cls: type[LayeredModule]) -> type[LayeredModule]:
        if MODULES.get(name, cls) is not cls:
            raise ValueError(f"module name {name!r} is taken by {MODULES[name].__name__}")
        MODULES[name] = cls
        cls.module_name = name
        return cls
    return deco


def is_module_folder(folder: str | Path) -> bool:
    """True when ``folder``'s ``config.json`` marks a saved :class:`LayeredModule` (no model is loaded)."""
    return read_module_config(folder) is not None


def read_module_config(folder: str | Path) -> ModuleConfig | None:
    """The :class:`ModuleConfig` of a saved module folder; None when ``config.json`` is absent, unreadable or a
    transformers config. Raises ValueError for a folder that names an unregistered class or a bad config."""
    try:
        data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or MODULE_KEY not in data:
        return None
    name = data[MODULE_KEY]
    if not isinstance(name, str) or name not in MODULES:
        raise ValueError(f"model folder {str(folder)!r} names module {name!r}, which homoscope does not have; "
                         f"it has: {', '.join(sorted(MODULES))}")
    try:
        config = ModuleConfig.from_dict(data)
        with torch.device("meta"):  # the class's own checks of its options, before any memory is taken
            MODULES[name](config)
    except ValueError as err:
        raise ValueError(f"config.json of model folder {str(folder)!r}: {err}") from None
    except RuntimeError as err:  # sizes no tensor can have
        raise ValueError(f"config.json of model folder {str(folder)!r} states sizes module {name!r} cannot be "
                         f"built with ({str(err).splitlines()[0][:160]})") from None
    return config


def save_module(model: LayeredModule, tokenizer: Any, folder: str | Path, marker: dict | None = None) -> Path:
    """Save a registered module as a model folder: ``config.json``, ``model.safetensors`` (shared tensors
    stored once), the tokenizer's files and, with ``marker``, ``homoscope_model.json``. Returns the folder.

    Raises ValueError for a module whose class is not registered (:func:`register_module`)."""
    from safetensors.torch import save_model

    from .registry import MARKER_FILE

    if getattr(type(model), "module_name", None) not in MODULES:
        raise ValueError(f"{type(model).__name__} is not a registered module class; register it with "
                         "homoscope.models.register_module before saving")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
    save_model(model, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(str(folder))
    if marker is not None:
        (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return folder


def load_module(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[LayeredModule, Any]:
    """The module and fast tokenizer of a saved module folder, in eval mode on the CPU.

    Raises ValueError for a folder that is not a module folder, names an unregistered class, or whose weights
    do not match the class (missing, unexpected or misshapen tensors, named)."""
    from safetensors.torch import load_model
    from transformers import PreTrainedTokenizerFast

    config = read_module_config(folder)
    if config is None:
        raise ValueError(f"folder {str(folder)!r} holds no module config ({MODULE_KEY} in config.json)")
    for name in ("model.safetensors", "tokenizer.json"):
        if not (Path(folder) / name).is_file():
            raise ValueError(f"module folder {str(folder)!r} has no {name}; save_module writes the weights as "
                             "model.safetensors and the tokenizer as tokenizer.json")
    _check_weights(folder, config)
    model = MODULES[config.module](config)
    load_model(model, str(Path(folder) / "model.safetensors"), strict=True)
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # a damaged tokenizer file: named, in one line
        raise ValueError(f"the tokenizer files of module folder {str(folder)!r} cannot be read "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    return model.to(dtype=dtype).eval(), tokenizer


def _check_weights(folder: str | Path, config: ModuleConfig) -> None:
    """Compare the tensors of ``model.safetensors`` (names, shapes, float dtypes; read from its header) with
    those the config's class holds, before any memory is taken for them. Raises ValueError naming the file."""
    from safetensors import safe_open

    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in MODULES[config.module](config).state_dict().items()}
    where = f"model.safetensors in {str(folder)!r} does not fit module {config.module!r}"
    with safe_open(str(Path(folder) / "model.safetensors"), framework="pt") as f:
        got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or unexpected:
        raise ValueError(f"{where}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    wrong = [f"{k} {got[k]} (expected {want[k]})" for k in sorted(want) if got[k] != want[k]]
    wrong += [f"{k} of dtype {dtypes[k]}" for k in sorted(want) if not dtypes[k].startswith(("F", "BF"))]
    if wrong:
        raise ValueError(f"{where}: {', '.join(wrong[:3])}")


def character_tokenizer(units: list[str], *, prefix: str | None, suffix: str | None, unk: str,
                        model_max_length: int = 100_000):
    """A fast tokenizer of single characters (``tokenizers`` WordLevel over the characters of ``units``).

    Every character of a text is one unit, its offsets its own span; a character not in ``units`` is
    ``unk``. ``prefix`` / ``suffix`` (units of the vocabulary, e.g. Flair's ``"\\n"`` and ``" "``) are added
    around every text as special units (mask 1, no offsets). ``unk`` is also the pad unit. Returns a
    ``transformers.PreTrainedTokenizerFast``. Raises ValueError for repeated units or a marker not in ``units``.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {u: i for i, u in enumerate(units)}
    if len(vocab) != len(units):
        raise ValueError("units holds a unit twice")
    for name, unit in (("prefix", prefix), ("suffix", suffix), ("unk", unk)):
        if unit is not None and unit not in vocab:
            raise ValueError(f"{name}={unit!r} is not one of the units")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    marks = [(f"[{n}]", vocab[u]) for n, u in (("START", prefix), ("END", suffix)) if u is not None]
    template = " ".join([m for m, _ in marks[:1] if prefix is not None] + ["$A"]
                        + [m for m, _ in marks[-1:] if suffix is not None])
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=marks)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, pad_token=unk,
                                   model_max_length=model_max_length)
