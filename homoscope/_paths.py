"""Where homoscope keeps its cache: assembled packaged models and stored representations."""
from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def homoscope_home() -> Path:
    """Return the cache folder: ``$HOMOSCOPE_HOME`` if set, else the user cache dir + ``homoscope``.

    The folder is created if missing. Raises ValueError if the path exists and is not a folder.
    """
    env = os.environ.get("HOMOSCOPE_HOME")
    home = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("homoscope"))
    if home.exists() and not home.is_dir():
        raise ValueError(f"HOMOSCOPE_HOME={str(home)!r} exists and is not a folder; point it at a folder")
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
    """Permission bits of a new file under the current umask (``mkstemp`` files are 0600 otherwise)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
