"""The representation store: ``[L+1, n, d]`` stacks on disk, keyed by a fingerprint.

A study stores each model's representations as shards (one entry per model x shard x
fingerprint; see :mod:`homoscope.study.shards`), each written as soon as it is computed.
A stored entry is two files in the store folder:

* ``<model>-<key16>.safetensors`` - the tensor (no pickle), with its key in the metadata;
* ``<model>-<key16>.json`` - what it is (fingerprint parts, shape, timings) and the sha256 of the
  tensor file, written after it.

Both are written to a temporary name in the same folder and renamed (``os.replace``), so a
killed run never leaves a file under its final name; an entry counts only when the json exists
and the tensor file's size and sha256 match it. The key is the sha256 of the JSON of
(model weights fingerprint, corpus fingerprint, unit, pooling, max length, dtype, padding side,
extractor version, and for a shard its text range): change any of them and the entry is computed
again. Writers take the store's lock file (``filelock``) for the write itself (not the computation),
so two processes writing the same entry leave one whole entry; a writer waiting over
:data:`LOCK_NOTICE_S` seconds says so, and the first write of a store object removes the temporary
files a killed writer left.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .._paths import atomic_path, atomic_write_bytes, homoscope_home, safe_name

EXTRACTOR_VERSION = 1
# seconds a writer waits for the store's write lock before it says it is waiting
LOCK_NOTICE_S = 10


def fingerprint_key(**parts) -> str:
    """sha256 hex of the sorted JSON of ``parts`` plus the extractor version."""
    blob = json.dumps({"extractor": EXTRACTOR_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class RepresentationStore:
    """Folder of stored representation stacks (default ``homoscope_home()/representations``).

    Raises ValueError if ``root`` exists and is not a folder.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else homoscope_home() / "representations"
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"store folder {str(self.root)!r} is a file; give a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self._swept = False

    def _paths(self, model_name: str, key: str) -> tuple[Path, Path]:
        stem = f"{safe_name(model_name)}-{key[:16]}"
        return self.root / f"{stem}.safetensors", self.root / f"{stem}.json"

    def record(self, model_name: str, key: str) -> dict | None:
        """The record of a whole, uncorrupted entry (size and sha256 of its tensor file checked), else None."""
        tpath, jpath = self._paths(model_name, key)
        if not (tpath.exists() and jpath.exists()):
            return None
        try:
            record = json.loads(jpath.read_text())
            if not isinstance(record, dict) or record.get("key") != key or tpath.stat().st_size != record.get("size"):
                return None
            if _sha256_file(tpath) != record.get("sha256"):
                return None
            with safe_open(str(tpath), framework="pt") as f:  # the record's shape is the tensor's
                if list(f.get_slice("stack").get_shape()) != record.get("shape"):
                    return None
        except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError):
            return None
        return record

    def get(self, model_name: str, key: str) -> tuple[torch.Tensor, dict] | None:
        """The stored stack and its record, or None if absent, partial or corrupt."""
        record = self.record(model_name, key)
        if record is None:
            return None
        try:
            tensor = load_file(str(self._paths(model_name, key)[0]))["stack"]
        except (OSError, ValueError, KeyError):
            return None
        return tensor, record

    def read(self, model_name: str, key: str, layers: slice | None = None) -> torch.Tensor:
        """The stack of an entry (``[L, n, d]``, or only ``layers`` of it, read from disk without the rest).

        No checksum is computed: call it for entries :meth:`record` confirmed. Raises OSError or
        ValueError where the entry is gone or unreadable.
        """
        tpath = self._paths(model_name, key)[0]
        with safe_open(str(tpath), framework="pt") as f:
            if layers is None:
                return f.get_tensor("stack")
            return f.get_slice("stack")[layers]

    def put(self, model_name: str, key: str, stack: torch.Tensor, record: dict) -> Path:
        """Store ``stack`` ([L+1, n, d], any float dtype, saved contiguous on CPU) atomically.

        Holds the store's write lock (``.write.lock``) while writing, so concurrent writers take turns
        and two processes writing one entry leave one whole entry.
        """
        tpath, jpath = self._paths(model_name, key)
        lock = FileLock(str(self.root / ".write.lock"))
        try:
            lock.acquire(timeout=LOCK_NOTICE_S)
        except Timeout:
            warnings.warn(f"waiting for the write lock of the store {self.root} (.write.lock), held by another "
                          "process writing to it", RuntimeWarning, stacklevel=2)
            lock.acquire()
        try:
            self._sweep()
            return self._put(tpath, jpath, model_name, key, stack, record)
        finally:
            lock.release()

    def _sweep(self) -> None:
        """Remove temporary files left by a killed writer (called under the write lock, which every writer
        holds while its temporaries exist: any found then are orphans); once per store object."""
        if self._swept:
            return
        for pattern in (".*.safetensors.*.tmp", ".*.json.*.tmp"):  # the names _put gives its temporaries
            for tmp in self.root.glob(pattern):
                if tmp.is_file():
                    try:
                        tmp.unlink()
                    except OSError:
                        pass  # a temporary that cannot go harms nothing: it is never read
        self._swept = True

    def _put(self, tpath: Path, jpath: Path, model_name: str, key: str, stack: torch.Tensor, record: dict) -> Path:
        with atomic_path(tpath) as tmp:
            try:
                save_file({"stack": stack.detach().cpu().contiguous()}, tmp, metadata={"key": key})
            except SafetensorError as err:  # its I/O failures (a full disk) are not OSErrors
                raise OSError(f"writing {tpath.name} failed: {err}") from err
        full = {
            **record,
            "key": key,
            "model": model_name,
            "shape": list(stack.shape),
            "size": tpath.stat().st_size,
            "sha256": _sha256_file(tpath),
        }
        atomic_write_bytes(jpath, json.dumps(full, indent=2, default=str).encode())
        return tpath
