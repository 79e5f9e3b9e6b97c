"""Where homoscope keeps its cache: assembled packaged models and stored representations."""
from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import platformdirs

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def homoscope_home(*, create: bool = True) -> Path:
    """Return the cache folder: ``$HOMOSCOPE_HOME`` if set, else the user cache dir + ``homoscope``.

    The folder is created if missing, unless ``create`` is False (a caller that only names it). Raises
    ValueError if the path exists and is not a folder.
    """
    env = os.environ.get("HOMOSCOPE_HOME")
    home = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("homoscope"))
    if home.exists() and not home.is_dir():
        raise ValueError(f"HOMOSCOPE_HOME={str(home)!r} exists and is not a folder; point it at a folder")
    if create:
        home.mkdir(parents=True, exist_ok=True)
    return home


def safe_name(name: str, max_len: int = 80) -> str:
    """Turn any model or corpus name into a file-name fragment that stays inside its folder.

    Keeps letters, digits, ``.``, ``_`` and ``-``; everything else becomes ``_``; leading dots are
    stripped so that no name can be ``..`` or hidden. Never returns an empty string.
    """
    s = _UNSAFE.sub("_", str(name)).lstrip(".")[:max_len]
    return s or "_"


def file_mode() -> int:
    """Permission bits of a new file under the current umask (``mkstemp`` files are 0600 otherwise).

    The umask is read from ``/proc/self/status`` where the system has it; setting and restoring it, the
    only other way, would change it for every thread of the process for an instant.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.<name>.<random>.tmp``) to write; on success the file is
    given the umask's permission bits, synced to disk and renamed over ``path`` in one step.

    The parent folder is created. On error (or a kill) ``path`` is untouched and the temporary is removed
    (a kill leaves it behind; its name says what it was). The one way homoscope writes a file atomically.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # writers that re-create the file (safetensors) make it 0600
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`); returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))
