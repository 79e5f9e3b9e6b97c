"""A results folder holds one whole run.

Every output of a run (or of a rebuild) is written into a staging folder beside the results folder
(``.<name>.staging-<id>``) and swapped in at the end: on Linux by one ``renameat2(RENAME_EXCHANGE)``,
elsewhere by two renames (the old folder is set aside as ``.<name>.replaced-<id>`` for the instant between
them). A reader sees the old run or the new one, never a mix; a run that fails or is killed before the
swap leaves the folder as it was (a new folder is not created at all).

One process at a time holds a results folder: the lock file ``.homoscope.lock`` inside it (``filelock``),
hard-linked into the staging folder before the swap so that the lock held is the one at the folder's path
before and after it. A second run on a folder in use is refused at once. Whoever takes the lock next
removes the staging folders a killed run left behind and, where a kill fell between the two renames, puts
the set-aside run back. A folder created for a run that then failed is removed again.

A run replaces the folder whole, so a folder that holds anything homoscope does not write
(:data:`OUTPUT_NAMES`) is refused rather than emptied.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fnmatch
import glob
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["OUTPUT_NAMES", "ResultsFolder"]

#: What a run writes at the top of its folder (glob patterns); anything else there is the user's.
OUTPUT_NAMES = (
    "similarity.parquet", "similarity.csv", "summary.csv", "probes.csv", "agreement.csv", "homogenization.csv",
    "extra_*.csv", "rows.csv", "study.toml", "manifest.json", "findings.json", "report.md", "report.html",
    "heatmaps", "summary_*.png", "dendrogram_*.png", "controls_*.png", "probes.png", ".homoscope.lock",
)

#: The lock file inside a results folder.
LOCK_NAME = ".homoscope.lock"

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where the system or filesystem cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # not here: the two-rename path follows
        return False
    raise OSError(err, os.strerror(err), str(a))


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ResultsFolder:
    """The lock, staging and swap of one results folder (see the module doc).

    Use as a context manager: ``with ResultsFolder(out) as folder: staging = folder.stage(); ...;
    folder.commit()``. Leaving the block without :meth:`commit` removes the staging folder. The lock is
    re-entrant within a process (the same folder may be taken again by code the holder calls).

    Args:
        out: the results folder (need not exist).
        option: the name the user gave it (``out``, ``--out``) for messages.

    Raises:
        ValueError: on :meth:`check` or :meth:`acquire` (see there).
    """

    def __init__(self, out: str | os.PathLike, option: str = "out"):
        self.given = Path(out)
        self.path = Path(os.path.realpath(out))  # a link to a folder: the run replaces the folder it names
        self.option = option
        self.staging: Path | None = None
        self._created = False
        self._lock = FileLock(str(self.path / LOCK_NAME), is_singleton=True)

    # -- checks -----------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a folder a run cannot replace whole.

        Raises:
            ValueError: ``out`` is a file, the current folder (or holds it), holds files homoscope does not
                write (the first few are named), or exists in a folder that cannot be written (the run is
                staged beside it).
        """
        where = f"{self.option}={str(self.given)!r}"
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{where} is a file, not a folder; choose a folder for the results")
        if self.path.is_dir():
            try:
                shutil.rmtree(tempfile.mkdtemp(prefix=f".{self.path.name}.staging-check-", dir=self.path.parent))
            except OSError as err:
                raise ValueError(f"{where}: the folder that holds it, {str(self.path.parent)!r}, is not writable "
                                 f"({err.strerror or err}); a run is written beside its results folder and swapped "
                                 "in, so choose a folder in a writable place") from None
        cwd = Path.cwd().resolve()
        if self.path.exists() and (self.path.resolve() == cwd or self.path.resolve() in cwd.parents):
            raise ValueError(f"{where} is the current folder or holds it; a run replaces its results folder "
                             "whole, so give a folder of its own (e.g. --out results)")
        foreign = self.foreign()
        if foreign:
            shown = ", ".join(repr(f) for f in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                                               else "")
            raise ValueError(f"{where} holds {shown}, which homoscope does not write; a run replaces its results "
                             "folder whole, so move them or choose another folder")

    def foreign(self) -> list[str]:
        """Names at the top of the folder that are not outputs of a run, and anything in ``heatmaps/`` but its
        PNG files (sorted)."""
        if not self.path.is_dir():
            return []
        top = [p.name for p in self.path.iterdir() if not any(fnmatch.fnmatchcase(p.name, pat) for pat in OUTPUT_NAMES)]
        figures = self.path / "heatmaps"
        inner = ([f"heatmaps/{p.name}" for p in figures.iterdir() if not (p.is_file() and p.suffix == ".png")]
                 if figures.is_dir() else [])
        return sorted(top + inner)

    # -- lock -------------------------------------------------------------------------------------
    def acquire(self) -> "ResultsFolder":
        """Take the folder's lock at once (creating the folder where it is missing), then tidy what a killed
        run left (see the module doc).

        Raises:
            ValueError: another process holds the folder, or the folder cannot be created or written.
        """
        where = f"{self.option}={str(self.given)!r}"
        try:
            if not self.path.exists():
                self._restore_replaced()
            # a folder that holds only a lock was made by a run that was killed: this run owns it as new
            self._created = not self.path.exists() or os.listdir(self.path) == [LOCK_NAME]
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except Timeout:
            raise ValueError(f"{where} is in use by another homoscope run (it holds {LOCK_NAME} there); wait for it "
                             "to finish or choose another folder") from None
        except OSError as err:
            self._remove_if_created()
            raise ValueError(f"{where} cannot be locked for this run: {err.strerror or err}; choose a folder you "
                             "can write") from None
        if self._lock.lock_counter == 1:
            for stale in self._leftovers("replaced") + self._leftovers("staging"):
                shutil.rmtree(stale, ignore_errors=True)
        return self

    def release(self) -> None:
        """Remove the staging folder (and the folder itself where this run created it and wrote nothing),
        then release the lock."""
        self.discard()
        if self._lock.is_locked:
            if self._lock.lock_counter == 1:
                self._remove_if_created()
            self._lock.release()

    def __enter__(self) -> "ResultsFolder":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _leftovers(self, kind: str) -> list[Path]:
        return sorted(self.path.parent.glob(f".{glob.escape(self.path.name)}.{kind}-*"))

    def _restore_replaced(self) -> None:
        """A swap by two renames cut short between them: the set-aside run goes back to its place."""
        replaced = self._leftovers("replaced")
        if replaced:
            os.rename(replaced[-1], self.path)

    def _remove_if_created(self) -> None:
        if not self._created:
            return
        self._created = False
        try:
            left = [p.name for p in self.path.iterdir()]
            if set(left) <= {LOCK_NAME}:
                for name in left:
                    os.unlink(self.path / name)
                os.rmdir(self.path)
        except OSError:
            pass  # an empty folder left behind harms nothing

    # -- staging and swap -------------------------------------------------------------------------
    def stage(self) -> Path:
        """A new, empty staging folder beside the results folder (held until :meth:`commit`)."""
        if not self._lock.is_locked:
            raise RuntimeError("stage() needs the folder's lock: use the folder as a context manager")
        self.discard()
        self.staging = self.path.with_name(f".{self.path.name}.staging-{uuid.uuid4().hex[:12]}")
        self.staging.mkdir()
        return self.staging

    def commit(self) -> None:
        """Swap the staging folder in as the results folder; the previous run's files are removed."""
        staging, self.staging = self.staging, None
        if staging is None:
            raise RuntimeError("commit() without stage()")
        try:  # the lock file held, at the folder's path after the swap too
            os.link(self.path / LOCK_NAME, staging / LOCK_NAME)
        except OSError:
            (staging / LOCK_NAME).touch()
        _sync_dir(staging)
        if _exchange(staging, self.path):
            shutil.rmtree(staging, ignore_errors=True)  # now the previous run
        else:
            aside = self.path.with_name(f".{self.path.name}.replaced-{uuid.uuid4().hex[:12]}")
            os.rename(self.path, aside)
            os.rename(staging, self.path)
            shutil.rmtree(aside, ignore_errors=True)
        self._created = False
        _sync_dir(self.path.parent)

    def discard(self) -> None:
        """Remove the staging folder, if any (nothing of the results folder changes)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
