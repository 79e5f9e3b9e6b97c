"""Weight fingerprints: a sha256 that changes whenever a model's weights change.

Two kinds, never mixed for the same model:

- ``files_fingerprint(paths)``: over the bytes of the weight files on disk (safetensors, ``.bin``).
  A single file's fingerprint is that file's plain sha256 (the digest the Hugging Face hub shows for
  it); several files combine their digests in name order. How a file is known unchanged is the
  ``mode`` (:data:`FINGERPRINTS`):

  - ``stat`` (the default): each file's digest is cached in a small sidecar (in ``cache``, by default
    ``homoscope_home()/fingerprints/``) keyed by the file's absolute path, size, modification time,
    change time (ns) and inode, and reused while all five are the same. Rewriting a file changes its
    change time (the system sets it; ``os.utime`` cannot set it back), so a file rewritten in place
    with its size and modification time kept is hashed again. Not seen: bytes changed without the
    system's knowledge (a failing disk, a network file system that does not report writes) and, on
    Windows, which keeps no change time, an in-place rewrite that keeps size and modification time.
  - ``content``: every file is hashed again on every call (one read of the weights) and the sidecar
    is refreshed; nothing about the file is trusted.
- ``module_fingerprint(model)``: over the tensors of an in-memory ``state_dict`` (name, dtype, shape,
  raw bytes, in sorted name order), for models that never touched the disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import torch

from .._paths import file_mode, homoscope_home

_CHUNK = 1 << 22  # 4 MiB reads
_SIDECAR_VERSION = 2  # 2: the key holds the change time and the inode
FINGERPRINTS = ("stat", "content")
"""How a weight file is known unchanged: ``stat`` (cached digest while path, size, times and inode hold) or
``content`` (hashed on every call)."""


def _sidecar_path(path: Path, cache: Path | None) -> Path:
    key = hashlib.sha256(str(path).encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return (cache if cache is not None else homoscope_home() / "fingerprints") / f"{key}.json"


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while True:
            block = fh.read(_CHUNK)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def _stat_key(path: Path) -> dict:
    """What ``stat`` mode compares: the absolute path, size, modification and change times (ns), inode."""
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino}


def _cached(sidecar: Path, key: dict) -> str | None:
    """The digest a sidecar holds for exactly ``key`` (path, size, times, inode); None if it holds another or
    cannot be read."""
    try:
        cached = json.loads(sidecar.read_text(encoding="utf-8"))
        if cached.get("version") == _SIDECAR_VERSION and all(cached.get(k) == v for k, v in key.items()):
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    return None


def _remember(sidecar: Path, key: dict, digest: str) -> None:
    """Write the sidecar atomically; a folder that cannot be written only costs a hash next time."""
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": _SIDECAR_VERSION, **key, "sha256": digest})
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=sidecar.parent)
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(payload)
        os.replace(tmp, sidecar)
    except OSError:
        pass


def file_sha256(path: str | os.PathLike, *, use_cache: bool = True, mode: str = "stat",
                cache: str | os.PathLike | None = None) -> str:
    """Return the sha256 hex digest of one file's bytes (read in 4 MiB blocks).

    ``mode="stat"`` reuses the digest cached for the file's absolute path, size, modification time,
    change time (ns) and inode; ``mode="content"`` hashes the file again and refreshes the cache (see
    the module doc for what each sees). The cache is a JSON sidecar per file in ``cache`` (default
    ``homoscope_home()/fingerprints``), rewritten atomically and recomputed when unreadable;
    ``use_cache=False`` neither reads nor writes it.

    Raises:
        FileNotFoundError: if ``path`` does not exist or is not a file.
        ValueError: ``mode`` is not one of :data:`FINGERPRINTS`.
    """
    if mode not in FINGERPRINTS:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(FINGERPRINTS)}")
    p = Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(f"path={str(p)!r} is not a file; cannot fingerprint it")
    key = _stat_key(p)
    sidecar = _sidecar_path(p, None if cache is None else Path(cache)) if use_cache else None
    if sidecar is not None and mode == "stat":
        hit = _cached(sidecar, key)
        if hit is not None:
            return hit
    digest = _hash_file(p)
    if sidecar is not None:
        _remember(sidecar, key, digest)
    return digest


def files_fingerprint(paths: Iterable[str | os.PathLike], *, root: str | os.PathLike | None = None,
                      mode: str = "stat", cache: str | os.PathLike | None = None) -> str:
    """Fingerprint a set of weight files: sha256 hex.

    One file: its plain sha256. Several: sha256 over ``"<name>:<sha256>\\n"`` lines sorted by name,
    where name is the path relative to ``root`` (or the file name). ``mode`` and ``cache`` are those of
    :func:`file_sha256`. Raises ValueError if ``paths`` is empty or ``mode`` is unknown.
    """
    items = [Path(p) for p in paths]
    if not items:
        raise ValueError("paths=[] is empty; a fingerprint needs at least one weight file")
    if len(items) == 1:
        return file_sha256(items[0], mode=mode, cache=cache)
    rows = []
    for p in items:
        name = p.relative_to(root).as_posix() if root is not None else p.name
        rows.append(f"{name}:{file_sha256(p, mode=mode, cache=cache)}\n")
    return hashlib.sha256("".join(sorted(rows)).encode("utf-8")).hexdigest()


def module_fingerprint(model: torch.nn.Module) -> str:
    """Fingerprint an in-memory module from its ``state_dict``: sha256 hex.

    Hashes, for every entry in sorted key order, the key, dtype, shape and raw bytes of the tensor
    (moved to CPU). Tied weights appear under each of their names. Deterministic across runs and
    devices for the same values; differs from ``files_fingerprint`` of the same weights.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode("utf-8"))
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """Return the weight files a Hugging Face folder would load from: safetensors first, else ``.bin``.

    Looks only at the folder's top level (``model.safetensors``, ``model-0000x-of-0000y.safetensors``,
    ``pytorch_model*.bin``). Returns a sorted list, empty if none.
    """
    root = Path(folder)
    found = sorted(p for p in root.glob("*.safetensors") if p.is_file())
    if not found:
        found = sorted(p for p in root.glob("pytorch_model*.bin") if p.is_file())
    return found
