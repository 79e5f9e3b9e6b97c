"""Loading a resolved model: model in eval mode on a device, fast tokenizer, and a ``ModelInfo`` card.

``ModelInfo`` records what a representation store and a report need to know about a model: its
architecture and kind, blocks L (the model has L + 1 layers, layer 0 = embedding output), width d,
parameter count, dtype, license, a weight fingerprint, the longest input it takes, and whether the
last entry of ``output_hidden_states`` comes after the model's final norm (found by experiment,
never assumed).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._spelling import typed
from .files import check_model_folder, damaged_error, damaged_file
from .modules import LayeredModule, ModuleConfig, load_module, read_module_config
from .fingerprint import files_fingerprint, module_fingerprint, weight_files
from .registry import PACKAGED, is_assembled, read_marker
from .resolve import ModelSource, resolve
from .stacks import DecoderStack, decoder_blocks

PROBE_TEXT = "The cat sat on the mat, and then it slept."

# Model types whose learned positions are offset by padding_idx + 1 (RoBERTa-style), so the usable
# length is max_position_embeddings - 2.
_OFFSET_POSITION_TYPES = {
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer", "roberta-prelayernorm",
    "data2vec-text", "xmod", "ibert", "luke", "markuplm", "bart", "mbart",
}
_DEFAULT_MAX_LENGTH = 512


@dataclass
class ModelInfo:
    """What is known about a loaded model; ``asdict()`` gives a JSON-ready dict.

    Attributes:
        name: display name (packaged name, folder name, hub id, or the caller's name).
        spec: the spec it was loaded from (``<in-memory>`` for ``from_module``).
        source_kind: ``packaged``, ``local``, ``hub`` or ``module``.
        location: folder path or hub id, as a string.
        architecture: ``config.model_type``.
        kind: ``encoder`` (bidirectional) or ``decoder`` (causal).
        blocks: number of transformer blocks L; ``output_hidden_states`` gives L + 1 layers.
        width: hidden size d.
        n_params: number of parameters of the loaded module (tied weights counted once).
        dtype: parameter dtype, e.g. ``float32``.
        license: license name (``unknown`` if not stated).
        notes: provenance and caveats (quantization, randomly initialized weights, pad token choice).
        final_norm_in_last: True if ``hidden_states[-1]`` is after the final norm (it differs from the
            last block's output), False if it is the last block's raw output, None if undetermined.
        fingerprint: sha256 hex of the weight files (or of the state dict for in-memory modules).
        max_length: longest input in tokens (position limit and tokenizer limit, sanitized).
        license_url: where the license text lives, if known.
        head: True if the module carries its LM / masked-LM head (``load_model(..., head=True)``).
        head_loaded: for head models, whether the head weights came from the checkpoint (False:
            randomly initialized, predictions meaningless); None for base models.
        padding_side: the tokenizer's padding side (kept as the tokenizer ships it).
        quantization: how weights were dequantized, empty for float checkpoints.
        device: device the module sits on.
        license_file: path of a license text shipped in the model folder (e.g. Gemma terms), or ''.
        stack: ``decoder`` when an encoder-decoder model is measured at its decoder
            (:class:`~homoscope.models.stacks.DecoderStack`), else ''.
        recipe: the training recipe a model folder's ``homoscope_model.json`` names (``homoscope zoo`` writes
            it, e.g. ``zoo-lstm``), '' if none: models of one recipe differ only in their seed.
        seed: the training seed of a recipe's model (from the same file), None if not stated.
    """

    name: str
    spec: str
    source_kind: str
    location: str
    architecture: str
    kind: str
    blocks: int
    width: int
    n_params: int
    dtype: str
    license: str
    notes: str
    final_norm_in_last: bool | None
    fingerprint: str
    max_length: int
    license_url: str = ""
    head: bool = False
    head_loaded: bool | None = None
    padding_side: str = "right"
    quantization: str = ""
    device: str = "cpu"
    license_file: str = ""
    stack: str = ""
    recipe: str = ""
    seed: int | None = None

    def asdict(self) -> dict:
        """A JSON-ready dict of all fields."""
        return dataclasses.asdict(self)


@dataclass
class LoadedModel:
    """A model ready for extraction: ``model`` (eval mode, on its device), fast ``tokenizer``, ``info``."""

    model: nn.Module
    tokenizer: Any
    info: ModelInfo
    source: ModelSource | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (cpu for a parameterless module)."""
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")


def best_device() -> torch.device:
    """The best available device: ``cuda``, then ``mps``, then ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get()
        except Exception:
            return config
    return config


def _config_int(config, attrs: tuple[str, ...], what: str) -> int:
    """The first positive integer among ``attrs`` of the (text) config; ValueError naming ``what``."""
    c = _text_config(config)
    for attr in attrs:
        v = getattr(c, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ValueError(f"config of model_type={getattr(c, 'model_type', None)!r} states no {what}")


def num_blocks(config) -> int:
    """Number of transformer blocks L from a config (``num_hidden_layers``, ``n_layer``, ``num_layers``).

    Raises:
        ValueError: if the config states none of them.
    """
    return _config_int(config, ("num_hidden_layers", "n_layer", "num_layers"), "number of layers")


def hidden_width(config) -> int:
    """Hidden size d from a config (``hidden_size``, ``n_embd``, ``d_model``).

    Raises:
        ValueError: if the config states none of them.
    """
    return _config_int(config, ("hidden_size", "n_embd", "d_model"), "hidden size")


#: The kind of a model with an encoder and a decoder (T5, BART): its encoder's layers are measured.
ENCODER_DECODER = "encoder-decoder"


def model_kind(config) -> str:
    """``decoder`` for causal language models, ``encoder`` for bidirectional ones, ``encoder-decoder``
    (:data:`ENCODER_DECODER`) for models with both (``config.is_encoder_decoder``).

    Decided by ``config.is_encoder_decoder``, then ``config.architectures`` (``*ForCausalLM``/``*LMHeadModel``
    vs ``*ForMaskedLM``), then ``config.is_decoder``, then whether the model type has a masked-LM or only a
    causal-LM class. A :class:`~homoscope.models.modules.ModuleConfig` states its kind (``recurrent`` for an
    LSTM language model).
    """
    if isinstance(config, ModuleConfig):
        return config.kind
    if getattr(config, "is_encoder_decoder", False):
        return ENCODER_DECODER
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "decoder"
    if any(a.endswith("ForMaskedLM") for a in archs):
        return "encoder"
    if getattr(config, "is_decoder", False):
        return "decoder"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = getattr(config, "model_type", "")
    if mt in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    if mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    return "encoder"


def encoder_of(model: nn.Module) -> tuple[nn.Module, str | None]:
    """``(module to run, kind)``: an encoder-decoder model's encoder (``get_encoder()``; its layers are the
    rows homoscope measures, the text run through the encoder alone) and :data:`ENCODER_DECODER`; a
    :class:`~homoscope.models.stacks.DecoderStack` itself and :data:`ENCODER_DECODER`; any other model itself
    and None."""
    if isinstance(model, DecoderStack):
        return model, ENCODER_DECODER
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return model.get_encoder(), ENCODER_DECODER
    return model, None


def find_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The ``nn.ModuleList`` of transformer blocks (length L); None if not found.

    Picks, among module lists of length ``num_blocks(config)``, a conventionally named one
    (``layers``, ``layer``, ``h``, ``blocks``) closest to the root.
    """
    try:
        n = num_blocks(model.config)
    except (AttributeError, ValueError):
        return None
    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            last = name.rsplit(".", 1)[-1]
            found.append((last not in ("layers", "layer", "h", "blocks"), name.count("."), name, mod))
    if not found:
        return None
    found.sort(key=lambda t: t[:3])
    return found[0][3]


def _probe_inputs(model: nn.Module, tokenizer, device: torch.device) -> dict:
    if tokenizer is not None:
        enc = dict(tokenizer(PROBE_TEXT, return_tensors="pt"))
    else:
        vocab = int(getattr(model.config, "vocab_size", 8) or 8)
        enc = {"input_ids": (torch.arange(1, 9) % vocab).unsqueeze(0)}
        enc["attention_mask"] = torch.ones_like(enc["input_ids"])
    params = inspect.signature(model.forward).parameters
    keep = {k: v.to(device) for k, v in enc.items()
            if k in ("input_ids", "attention_mask", "token_type_ids") and k in params}
    return keep


def detect_final_norm_in_last(model: nn.Module, tokenizer=None) -> bool | None:
    """Find out whether ``hidden_states[-1]`` comes after the model's final norm.

    Runs one short input with ``output_hidden_states=True`` and a forward hook on the last block;
    if the last hidden state equals the last block's output exactly, it is the raw block output
    (False); if it differs, something (the final norm) was applied after the last block (True).

    Returns:
        True / False, or None if the blocks cannot be found, the model is not a transformers model (a
        :class:`~homoscope.models.modules.LayeredModule` has no final norm to find), or the forward pass fails.
    """
    blocks = None if isinstance(model, LayeredModule) else find_blocks(model)
    if blocks is None or len(blocks) == 0:
        return None
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    captured: dict = {}

    def hook(_mod, _args, output):
        out = output if isinstance(output, torch.Tensor) else output[0]
        captured["out"] = out.detach()

    handle = blocks[-1].register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(**_probe_inputs(model, tokenizer, device), output_hidden_states=True)
    except Exception:
        return None
    finally:
        handle.remove()
        model.train(was_training)
    hidden = getattr(out, "hidden_states", None)
    if not hidden or "out" not in captured:
        return None
    last = hidden[-1]
    if last.shape != captured["out"].shape:
        return None
    return not torch.equal(last, captured["out"])


def sanitize_max_length(config, tokenizer=None) -> int:
    """The longest input in tokens: the smaller of the position limit and the tokenizer's limit.

    The position limit is ``max_position_embeddings`` (or ``n_positions``/``max_seq_len``), less 2 for
    RoBERTa-style models whose positions start after the padding index. Tokenizer limits of 1e7 or more
    are placeholders and ignored. Falls back to 512 if neither is known.
    """
    c = _text_config(config)
    cands = []
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length"):
        v = getattr(c, attr, None)
        if isinstance(v, int) and v > 0:
            if getattr(c, "model_type", "") in _OFFSET_POSITION_TYPES:
                pad = getattr(c, "pad_token_id", None)
                v -= (pad if isinstance(pad, int) and pad >= 0 else 1) + 1
            cands.append(v)
            break
    tml = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if isinstance(tml, (int, float)) and 0 < tml < 10_000_000:
        cands.append(int(tml))
    return int(min(cands)) if cands else _DEFAULT_MAX_LENGTH


def _n_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _dtype_name(model: nn.Module) -> str:
    for p in model.parameters():
        return str(p.dtype).replace("torch.", "")
    return "float32"


def _is_head_model(model: nn.Module) -> bool:
    base = getattr(model, "base_model", model)
    return base is not model


def _fix_pad(tokenizer, kind: str) -> str:
    """For decoders without a pad token, use eos as pad. Returns a note ('' if nothing changed)."""
    if tokenizer is None or kind != "decoder" or getattr(tokenizer, "pad_token", None) is not None:
        return ""
    eos = getattr(tokenizer, "eos_token", None)
    if eos is None:
        return "tokenizer has neither pad nor eos token; batches need an explicit pad token."
    tokenizer.pad_token = eos
    return f"pad_token set to eos_token {eos!r} (padding_side={tokenizer.padding_side!r})."


def _readme_license(folder: Path) -> str | None:
    readme = folder / "README.md"
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")[:8000]
    except OSError:
        return None
    m = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
    if not m:
        return None
    lic = re.search(r"^license:\s*(.+)$", m.group(1), re.M)
    return lic.group(1).strip().strip("'\"") if lic else None


def _describe(model: nn.Module, tokenizer, *, name: str, spec: str, source_kind: str, location: str,
              fingerprint: str, license: str, license_url: str, notes: list[str], head_loaded: bool | None,
              quantization: str, kind: str | None = None) -> ModelInfo:
    config = model.config
    kind = kind or model_kind(config)
    notes = [n for n in notes if n]
    pad_note = _fix_pad(tokenizer, kind)
    if pad_note:
        notes.append(pad_note)
    final = detect_final_norm_in_last(model, tokenizer)
    return ModelInfo(
        name=name,
        spec=spec,
        source_kind=source_kind,
        location=location,
        architecture=str(getattr(_text_config(config), "model_type", None) or getattr(config, "model_type", "")),
        kind=kind,
        blocks=num_blocks(config),
        width=hidden_width(config),
        n_params=_n_params(model),
        dtype=_dtype_name(model),
        license=license,
        notes=" ".join(notes),
        final_norm_in_last=final,
        fingerprint=fingerprint,
        max_length=sanitize_max_length(config, tokenizer),
        license_url=license_url,
        head=_is_head_model(model),
        head_loaded=head_loaded,
        padding_side=str(getattr(tokenizer, "padding_side", "right")) if tokenizer is not None else "right",
        quantization=quantization,
        device=str(next((p.device for p in model.parameters()), torch.device("cpu"))),
        stack="decoder" if isinstance(model, DecoderStack) else "",
    )


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(f"dtype={dtype!r} is not a torch dtype (e.g. torch.float32 or 'bfloat16')")


def from_module(model: nn.Module, tokenizer, name: str, *, spec: str | None = None, license: str = "unknown",
                notes: str = "") -> LoadedModel:
    """Wrap an in-memory transformers model, or a :class:`~homoscope.models.modules.LayeredModule` (any torch
    module behind the adapter interface), and its fast tokenizer as a ``LoadedModel``.

    The model is put in eval mode and stays on its device; the fingerprint hashes its ``state_dict``
    tensors (so two modules with the same weights share it). For a decoder whose tokenizer has no
    pad token, the tokenizer's pad token is set to its eos token (the tokenizer is changed in place).

    An encoder-decoder model is wrapped as its encoder (:func:`encoder_of`), of kind ``encoder-decoder``.

    Raises:
        ValueError: if ``model`` has no ``config`` (not a transformers model), or the config states no
            layer count or width.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise ValueError(f"model={type(model).__name__} must be a transformers model with a .config or a "
                         "homoscope.models.LayeredModule")
    if next(model.parameters(), None) is None:
        raise ValueError(f"model={type(model).__name__} has no parameters: homoscope runs a model on the device of "
                         "its parameters and builds its random-init control from them")
    model, kind = encoder_of(model)
    model.eval()
    info = _describe(model, tokenizer, name=str(name), spec=spec or "<in-memory>", source_kind="module",
                     location="<in-memory>", fingerprint=module_fingerprint(model), license=license,
                     license_url="", notes=[notes], head_loaded=True if _is_head_model(model) else None,
                     quantization="", kind=kind)
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, source=None)


def random_init_like(loaded: LoadedModel, seed: int = 0) -> LoadedModel:
    """The same architecture and tokenizer as ``loaded`` with freshly initialised random weights.

    This is the ``random-init`` control of DESIGN.md: run through the same pipeline, it tells what
    a similarity score is worth before any training. The weights are drawn by the architecture's
    own initialiser (``AutoModel.from_config``) under ``torch.manual_seed(seed)``, without touching
    the global random state; the model gets the same dtype and device as ``loaded.model``.

    Returns a ``LoadedModel`` named ``"<name> (random-init)"`` whose fingerprint hashes the new
    weights. Raises ValueError if ``loaded.model`` has no transformers config.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed={seed!r} must be an integer in [0, 2**63)")
    base = loaded.model
    recipe = architecture(loaded)
    param = next(base.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = build_architecture(recipe)
    model = model.to(device=param.device, dtype=param.dtype)
    out = from_module(model, loaded.tokenizer, f"{loaded.info.name} (random-init)",
                      spec=f"random-init:{loaded.info.spec}", license=loaded.info.license,
                      notes=f"random weights (seed {seed}), architecture of {loaded.info.name}")
    out.info.kind = loaded.info.kind
    return out


def architecture(loaded: LoadedModel) -> tuple:
    """How to build the loaded model's architecture again, as plain picklable values ``(how, class, config)``
    (:func:`build_architecture`): an encoder-decoder model is held as its encoder, built alone from its own
    config; a module behind the adapter interface builds itself from its config; a decoder stack wraps the
    sequence-to-sequence model. Raises ValueError if the model has no transformers config."""
    base = loaded.model
    config = getattr(base, "config", None)
    if config is None:
        raise ValueError(f"model {loaded.info.name!r} has no transformers config; cannot build a random-init copy")
    if isinstance(base, DecoderStack):
        return ("decoder", None, base.seq2seq.config)
    if loaded.info.kind == ENCODER_DECODER or isinstance(base, LayeredModule):
        return ("class", type(base), config)
    return ("auto", None, config)


def build_architecture(recipe: tuple) -> nn.Module:
    """A fresh module of the recipe :func:`architecture` gave, its weights drawn by its own initialiser."""
    from transformers import AutoModel

    how, cls, config = recipe
    if how == "decoder":
        return DecoderStack(AutoModel.from_config(config))
    return cls(config) if how == "class" else AutoModel.from_config(config)


def _installed_source(spec_or_source, auto_install: bool, progress: bool | None) -> ModelSource:
    """Resolve a spec (or take a ``ModelSource``); install a packaged model that is not assembled when
    ``auto_install`` allows it, else raise a ValueError that says how. Returns the source."""
    if isinstance(spec_or_source, ModelSource):
        source = spec_or_source
    else:
        source = resolve(spec_or_source, must_exist=not auto_install)
    if source.kind == "packaged" and not is_assembled(source.model_name):
        if not auto_install:
            raise ValueError(f"packaged model {source.model_name!r} is not installed; run "
                             f"`homoscope models install {source.model_name}`")
        from .installer import install

        install([source.model_name], progress=progress is not False)
        source = resolve(source.spec)
    return source


def _checked_weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder (:func:`weight_files`); ValueError when there are none,
    with a hint to convert a GGUF file the folder holds."""
    files = weight_files(folder)
    if not files:
        hint = ""
        if any(folder.glob("*.gguf")):
            hint = ("; it holds a GGUF file: convert it once with "
                    "homoscope.models.convert_gguf(gguf_path, out_dir) and load out_dir")
        raise ValueError(
            f"folder {str(folder)!r} has no weight files (*.safetensors or pytorch_model*.bin){hint}")
    return files


def _packaged_name(source: ModelSource) -> str | None:
    """The packaged model's name for a packaged source, else None (for the remedy of a damaged file)."""
    return source.model_name if source.kind == "packaged" else None


@dataclass
class _Provenance:
    """License, quantization and notes of a model as its registry entry, marker file or README states them."""

    license: str = "unknown"
    license_url: str = ""
    quantization: str = ""
    license_file: str = ""
    notes: list[str] = field(default_factory=list)
    recipe: str = ""
    seed: int | None = None


def _folder_provenance(source: ModelSource, folder: Path) -> _Provenance:
    """The provenance of a packaged or local model folder: from the packaged registry entry (by name or
    marker), else the marker file, else the license in the README's front matter."""
    prov = _Provenance()
    marker = read_marker(folder) or {}
    entry = PACKAGED.get(str(marker.get("name", ""))) if marker else None
    if source.kind == "packaged":
        entry = PACKAGED[source.model_name]
    if entry is not None:
        prov.license, prov.license_url, prov.quantization = entry.license, entry.license_url, entry.quantization
        prov.notes.append(entry.notes)
        if entry.license_file and (folder / entry.license_file).is_file():
            prov.license_file = str(folder / entry.license_file)
    elif marker:
        prov.license = marker.get("license") or prov.license
        prov.license_url = marker.get("license_url") or ""
        prov.quantization = marker.get("quantization") or ""
        prov.notes.append(marker.get("notes") or "")
    else:
        prov.license = _readme_license(folder) or prov.license
    recipe, seed = marker.get("recipe"), marker.get("seed")
    prov.recipe = recipe if isinstance(recipe, str) else ""
    prov.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    return prov


def _config_file(source: ModelSource) -> Path | None:
    """The ``config.json`` a source loads from, without network: the folder's, or the hub cache's; else None."""
    if source.kind in ("packaged", "local"):
        path = Path(source.location) / "config.json"
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(str(source.location), "config.json")
    except Exception:
        return None
    return Path(hit) if isinstance(hit, str) else None


def custom_code(source: ModelSource) -> list[str]:
    """The classes of its own code a model asks transformers to run (``auto_map`` of a config whose
    ``model_type`` transformers does not know; a known type loads with transformers' own code); [] if none
    or if its config cannot be read here (transformers then decides when the model loads)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    path = _config_file(source)
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
    except (OSError, ValueError):
        return []
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not isinstance(auto_map, dict) or config.get("model_type") in CONFIG_MAPPING_NAMES:
        return []
    return sorted({str(v[0] if isinstance(v, (list, tuple)) and v else v) for v in auto_map.values()})


def config_shape(source: ModelSource) -> tuple[int, int] | None:
    """``(blocks, width)`` from a model's config, read without loading weights or using the network; None where
    its config cannot be read here (a hub id not in the cache, a packaged model not assembled yet)."""
    from transformers import AutoConfig

    path = _config_file(source)
    if path is None:
        return None
    try:
        module = read_module_config(path.parent)
        if module is not None:
            return module.num_hidden_layers, module.hidden_size
        config = AutoConfig.from_pretrained(str(path.parent), local_files_only=True, trust_remote_code=False)
        blocks = decoder_blocks(config) if source.stack == "decoder" else num_blocks(config)
        return blocks, hidden_width(config)
    except Exception:  # a config transformers cannot read without the model's code: known when it loads
        return None


def _refuse_custom_code(source: ModelSource, classes: list[str]) -> ValueError:
    """The one-line refusal of a model that needs its own code, naming the model and the switch that allows it."""
    what = f" ({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''})" if classes else ""
    return ValueError(f"model {source.name!r} needs code of its own{what}, shipped in {str(source.location)!r}; "
                      f"homoscope runs a model's own code only with {typed('trust_remote_code', True)}: give it if "
                      "you trust that code")


def check_custom_code(source: ModelSource, trust_remote_code: bool) -> None:
    """Raise the one-line refusal (naming the model and the option as typed) when ``source`` needs code of its
    own (:func:`custom_code`) and ``trust_remote_code`` is off. Reads the config only; loads nothing."""
    classes = [] if trust_remote_code else custom_code(source)
    if classes:
        raise _refuse_custom_code(source, classes)


def _load_pretrained(source: ModelSource, where, head: bool, dtype: torch.dtype, common: dict, model_kw: dict,
                     progress: bool | None):
    """Load model and tokenizer from ``where`` (:func:`_from_pretrained`); return ``(model, tokenizer, loading)``.

    Raises a ValueError for a hub id that cannot be loaded, for a model or tokenizer that needs code of its
    own while ``trust_remote_code`` is off (transformers' own refusal, in one line), for a folder file that
    cannot be read (named: :func:`~homoscope.models.files.damaged_file`) and for a tokenizer that is not fast.
    """
    from .installer import _quiet_transformers

    try:
        with _quiet_transformers(bool(progress)):
            model, tokenizer, loading, _kind = _from_pretrained(where, head, dtype, common, model_kw)
    except Exception as exc:
        if (isinstance(exc, ValueError) and "custom code" in str(exc) and "trust_remote_code" in str(exc)
                and not common.get("trust_remote_code")):
            raise _refuse_custom_code(source, []) from None  # transformers' refusal of a model's own code
        if source.kind != "hub":  # a damaged file is named; any other failure is the loader's own
            found = damaged_file(where, full=True)
            if found is not None:
                raise damaged_error(where, found, _packaged_name(source)) from exc
            raise
        if not isinstance(exc, OSError):
            raise
        tried = "; ".join(source.meta.get("tried", []))
        raise ValueError(
            f"cannot load model spec {source.spec!r} as a hub id ({type(exc).__name__}: {exc}); "
            f"the hub may be unreachable (offline). Tried before: {tried}"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"model {source.name!r} has no fast tokenizer (tokenizer.json); "
                         "character offsets for word alignment need one")
    return model, tokenizer, loading


def _key_list(keys: list[str]) -> str:
    """The first four of ``keys`` in sorted order, comma-separated, with ``, ...`` when there are more."""
    return f"{', '.join(sorted(keys)[:4])}{', ...' if len(keys) > 4 else ''}"


def _missing_weights(model: nn.Module, loading: dict | None, head: bool) -> tuple[bool | None, list[str]]:
    """Read transformers' loading info for weights that were randomly initialized.

    Returns ``(head_loaded, notes)``: ``head_loaded`` is None unless a head model was asked for.
    """
    base_prefix = getattr(model, "base_model_prefix", "")
    # a pooler (BERT's) is never read: homoscope measures hidden states, so its absence is no news
    missing = [k for k in (loading or {}).get("missing_keys", []) or []
               if not (k.startswith("pooler.") or ".pooler." in k)]
    head_loaded: bool | None = None
    notes: list[str] = []
    if head and _is_head_model(model):
        head_missing = [k for k in missing if not (base_prefix and k.startswith(base_prefix + "."))]
        head_loaded = not head_missing
        if head_missing:
            notes.append(f"head weights missing from the checkpoint and randomly initialized "
                         f"({_key_list(head_missing)}); its predictions are meaningless.")
        missing = [k for k in missing if k not in head_missing]
    if missing:
        notes.append(f"weights not in the checkpoint, randomly initialized: {_key_list(missing)}.")
    return head_loaded, notes


def load_model(spec_or_source: str | os.PathLike | ModelSource, *, device: str | torch.device | None = None,
               dtype: torch.dtype | str = torch.float32, trust_remote_code: bool = False,
               auto_install: bool = False, name: str | None = None, head: bool = False,
               attn_implementation: str | None = None, progress: bool | None = None, fingerprint: str = "stat",
               fingerprint_cache: str | os.PathLike | None = None) -> LoadedModel:
    """Load a model by spec: packaged name, local Hugging Face folder, or hub id.

    Args:
        spec_or_source: a spec for ``resolve`` or an already resolved ``ModelSource``.
        device: target device; None picks ``best_device()`` (cuda, then mps, then cpu).
        dtype: parameter dtype (default float32).
        trust_remote_code: allow code shipped with a model folder to run. Off by default: model files
            are untrusted.
        auto_install: install a packaged model that is not assembled yet (pip + assembly).
        name: display name for ``info.name`` (default: from the source).
        head: load the model with its LM head (``AutoModelForCausalLM`` for decoders,
            ``AutoModelForMaskedLM`` for encoders) instead of the base model (``AutoModel``).
        attn_implementation: passed to transformers (``eager``, ``sdpa``); None keeps its default.
        progress: show transformers' loading bars and warnings (True) or silence them (False, None);
            install steps of ``auto_install`` are shown unless progress is False.
        fingerprint: how the weight files are known unchanged, ``stat`` or ``content``
            (:func:`~homoscope.models.fingerprint.file_sha256`).
        fingerprint_cache: folder of the weight digests' cache (default ``homoscope_home()/fingerprints``).

    Local folders load with ``local_files_only=True`` and prefer safetensors; a folder with only
    pickled ``.bin`` weights is read with ``torch.load(weights_only=True)`` (transformers' loader).

    Returns:
        LoadedModel with the model in eval mode on the device, a fast tokenizer, and ``info``.

    Raises:
        ValueError: unresolvable spec, packaged model not installed (and not ``auto_install``),
            a model that needs code of its own while ``trust_remote_code`` is off (before anything
            loads where its config says so), a folder without weight files, a damaged folder file (named:
            :mod:`homoscope.models.files`), a tokenizer that is not a fast tokenizer, an encoder-decoder
            model, a hub id that cannot be loaded (offline / unknown), or an unknown ``fingerprint`` mode.
    """
    dtype = _as_dtype(dtype)
    source = _installed_source(spec_or_source, auto_install, progress)
    check_custom_code(source, trust_remote_code)
    dev = torch.device(device) if device is not None else best_device()
    common: dict = {"trust_remote_code": bool(trust_remote_code)}
    model_kw: dict = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    marks = {"mode": fingerprint, "cache": fingerprint_cache}
    if source.kind in ("packaged", "local"):
        where, digest, prov = _from_folder(source, common, model_kw, marks)
    else:
        where, digest, prov = str(source.location), "", _Provenance()
    model, tokenizer, loading = _load_pretrained(source, where, head, dtype, common, model_kw, progress)
    head_loaded, missing_notes = _missing_weights(model, loading, head)
    model, kind = encoder_of(DecoderStack(model) if source.stack == "decoder" else model)
    model.eval()
    model.to(dev)
    if not digest:
        digest = _hub_fingerprint(str(source.location), **marks) or module_fingerprint(model)
    info = _describe(model, tokenizer, name=name or source.name, spec=source.spec, source_kind=source.kind,
                     location=str(source.location), fingerprint=digest, license=prov.license,
                     license_url=prov.license_url, notes=prov.notes + missing_notes, head_loaded=head_loaded,
                     quantization=prov.quantization, kind=kind)
    info.license_file, info.recipe, info.seed = prov.license_file, prov.recipe, prov.seed
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, source=source)


def _from_folder(source: ModelSource, common: dict, model_kw: dict, marks: dict) -> tuple[Path, str, _Provenance]:
    """A packaged or local folder's loading options (set in ``common`` and ``model_kw``), the fingerprint of its
    weight files (``marks``: mode and cache of :func:`files_fingerprint`) and its provenance.

    Raises ValueError for a folder without weight files or with a damaged file (named).
    """
    folder = Path(source.location)
    common["local_files_only"] = True
    files = _checked_weight_files(folder)
    check_model_folder(folder, packaged=_packaged_name(source))
    model_kw["use_safetensors"] = files[0].suffix == ".safetensors"
    return folder, files_fingerprint(files, root=folder, **marks), _folder_provenance(source, folder)


def _from_pretrained(where, head: bool, dtype: torch.dtype, common: dict, model_kw: dict):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    if common.get("local_files_only") and read_module_config(where) is not None:
        return _module_folder(where, head, dtype)
    config = AutoConfig.from_pretrained(where, **common)
    kind = model_kind(config)
    if head and kind == ENCODER_DECODER:
        raise ValueError(f"model_type={config.model_type!r} is an encoder-decoder model: its language-model head "
                         "is not used here (native-head agreement takes encoders and decoders)")
    if head:
        cls = AutoModelForCausalLM if kind == "decoder" else AutoModelForMaskedLM
    else:
        cls = AutoModel
    model, loading = cls.from_pretrained(where, config=config, dtype=dtype, output_loading_info=True,
                                         **common, **model_kw)
    tokenizer = AutoTokenizer.from_pretrained(where, **common)
    return model, tokenizer, loading, kind


def _module_folder(where, head: bool, dtype: torch.dtype):
    """``_from_pretrained`` for a saved :class:`~homoscope.models.modules.LayeredModule` folder."""
    if head:
        raise ValueError(f"model folder {str(where)!r} holds a homoscope module: native-head agreement takes "
                         "transformers encoders and decoders")
    model, tokenizer = load_module(where, dtype)
    return model, tokenizer, {"missing_keys": []}, model.config.kind


def _hub_fingerprint(repo_id: str, mode: str = "stat", cache=None) -> str:
    """Fingerprint of a hub model's cached weight files (:func:`files_fingerprint` with ``mode`` and ``cache``),
    without network; '' if not found."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return ""
    files = weight_files(folder)
    return files_fingerprint(files, root=folder, mode=mode, cache=cache) if files else ""
