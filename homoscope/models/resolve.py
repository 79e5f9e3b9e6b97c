"""Turning a model spec (packaged name, local folder, hub id) into a ``ModelSource``, offline.

Order: a packaged model name, then an existing local folder with ``config.json``, then a hub id (only
if the spec looks like one). ``resolve`` never contacts the network: with ``HF_HUB_OFFLINE`` set, a
hub id is accepted only if its ``config.json`` is already in the local hub cache.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .stacks import split_stack
from .registry import PACKAGED, assembled_path, is_assembled, is_installed, read_marker

_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")
_TRUE = {"1", "on", "yes", "true", "y"}
_GGUF_HINT = "convert it once with homoscope.models.convert_gguf(gguf_path, out_dir) and use out_dir"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    Attributes:
        name: display name (packaged name, local folder name, or hub id).
        spec: the spec as given.
        kind: ``packaged``, ``local`` or ``hub``.
        location: assembled/local folder (``Path``) or hub id (``str``).
        meta: extra facts: for packaged models ``installed``/``assembled`` and the registry entry;
            for folders the ``homoscope_model.json`` contents if present; for hub ids ``cached``.
        stack: ``decoder`` for a ``decoder:<spec>`` (an encoder-decoder model's decoder,
            :mod:`homoscope.models.stacks`), else ''.
    """

    name: str
    spec: str
    kind: str
    location: Path | str
    meta: dict = field(default_factory=dict)
    stack: str = ""

    @property
    def model_name(self) -> str:
        """The model's own name: ``name`` without the `` (decoder)`` a ``decoder:`` spec adds."""
        tail = f" ({self.stack})"
        return self.name[: -len(tail)] if self.stack and self.name.endswith(tail) else self.name


def hub_offline() -> bool:
    """True if ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_hub_id(spec: str) -> bool:
    """True if ``spec`` has the shape of a hub repo id: ``name`` or ``org/name`` (letters, digits, ``-_.``)."""
    return bool(_HUB_ID.match(spec)) and "--" not in spec and ".." not in spec


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in spec
        or spec.count("/") > 1
        or spec.endswith("/")
        or spec in (".", "..")
        or bool(re.match(r"^[A-Za-z]:[\\/]", spec))
    )


def hub_cached(repo_id: str) -> bool:
    """True if the hub repo's ``config.json`` is in the local hub cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return False
    return isinstance(hit, str)


def _packaged_hint(spec: str) -> str:
    close = difflib.get_close_matches(spec.lower(), list(PACKAGED), n=1, cutoff=0.5)
    return f" (did you mean the packaged model {close[0]!r}?)" if close else ""


def _packaged_source(key: str, spec: str, must_exist: bool) -> ModelSource:
    """The source of packaged model ``key``; ValueError when ``must_exist`` and it is not assembled."""
    entry = PACKAGED[key]
    assembled = is_assembled(key)
    if must_exist and not assembled:
        raise ValueError(
            f"packaged model {key!r} is not installed; run `homoscope models install {key}` "
            f"(or pass auto_install=True to load_model)"
        )
    return ModelSource(
        name=key, spec=spec, kind="packaged", location=assembled_path(key),
        meta={"assembled": assembled, "installed": is_installed(key), "packaged": entry.asdict(),
              "marker": read_marker(assembled_path(key)) if assembled else None},
    )


def _local_source(s: str, spec: str, tried: list[str]) -> ModelSource | None:
    """The source of local folder ``s`` when it holds ``config.json``.

    Otherwise returns None and adds to ``tried`` why ``s`` is not a model folder.
    """
    path = Path(s).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            folder = path.resolve()
            return ModelSource(name=folder.name, spec=spec, kind="local", location=folder,
                               meta={"marker": read_marker(folder)})
        gguf = " (it holds a GGUF file: " + _GGUF_HINT + ")" if any(path.glob("*.gguf")) else ""
        tried.append(f"local folder {str(path.resolve())!r}: exists but has no config.json{gguf}")
    elif path.exists():
        gguf = " (a GGUF file: " + _GGUF_HINT + ")" if path.suffix.lower() == ".gguf" else ""
        tried.append(f"local path {str(path.resolve())!r}: exists but is a file, not a model folder{gguf}")
    else:
        tried.append(f"local folder {str(path.resolve())!r}: does not exist")
    return None


def _hub_source(s: str, spec: str, tried: list[str]) -> ModelSource:
    """The source of hub id ``s``; ValueError listing ``tried`` when ``s`` is not a usable hub id."""
    if _looks_like_path(s) or not looks_like_hub_id(s):
        tried.append(f"hub id: {s!r} does not look like one (expected 'org/name' or 'name')")
        raise ValueError(f"cannot resolve model spec {spec!r}; tried: " + "; ".join(tried))
    cached = hub_cached(s)
    if hub_offline() and not cached:
        tried.append(f"hub id {s!r}: not in the local hub cache and HF_HUB_OFFLINE is set")
        raise ValueError(f"cannot resolve model spec {spec!r}; tried: " + "; ".join(tried))
    return ModelSource(name=s, spec=spec, kind="hub", location=s, meta={"cached": cached, "tried": tried})


def _stack_source(spec: str, stack: str, inner: str, must_exist: bool) -> ModelSource:
    """The source of ``decoder:<inner>``: the inner model's, named ``<name> (decoder)``. Raises ValueError for
    nothing or another ``decoder:`` after the prefix, and for a model whose readable config states no decoder."""
    if not inner.strip() or split_stack(inner)[0]:
        raise ValueError(f"spec={spec!r}: {stack}: is followed by one model spec (a packaged name, a folder or a hub "
                         f"id), as in '{stack}:t5-small'")
    source = resolve(inner, must_exist=must_exist)
    config = Path(source.location) / "config.json" if source.kind != "hub" else None
    if config is not None and config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None  # a damaged config.json is named when the folder is checked
        if isinstance(data, dict) and not data.get("is_encoder_decoder"):
            raise ValueError(f"spec={spec!r}: model {source.name!r} is not an encoder-decoder model (its config.json "
                             f"states no decoder stack); {stack}: applies to models such as T5 and BART")
    return dataclasses.replace(source, name=f"{source.name} ({stack})", spec=spec, stack=stack)


def resolve(spec: str, *, must_exist: bool = True) -> ModelSource:
    """Resolve a model spec to a ``ModelSource`` without loading anything or touching the network.

    Args:
        spec: a packaged model name (``minilm-l6``; see ``PACKAGED``), a local Hugging Face folder
            (containing ``config.json``), or a hub id (``org/name`` or ``name``); any of them after
            ``decoder:`` for an encoder-decoder model's decoder stack.
        must_exist: for a packaged name, raise if it is not assembled yet (``load_model`` passes
            False when it may install it).

    Returns:
        ModelSource with kind ``packaged``, ``local`` or ``hub``.

    Raises:
        ValueError: empty spec; a packaged model that is not installed (tells to run
            ``homoscope models install NAME``); a path that is not a model folder; or a spec that is
            none of the three, listing what was tried.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"spec={spec!r} must be a string (packaged name, folder or hub id)")
    spec = os.fspath(spec)
    s = spec.strip()
    if not s:
        raise ValueError("spec='' is empty; give a packaged name, a local folder or a hub id")
    stack, inner = split_stack(s)
    if stack:
        return _stack_source(spec, stack, inner, must_exist)
    if s.lower() in PACKAGED:
        return _packaged_source(s.lower(), spec, must_exist)
    tried = [f"packaged names ({', '.join(PACKAGED)}): no match{_packaged_hint(s)}"]
    local = _local_source(s, spec, tried)
    if local is not None:
        return local
    return _hub_source(s, spec, tried)
