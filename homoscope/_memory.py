"""Host memory that a long run has freed goes back to the operating system.

PyTorch allocates CPU tensors with the C library's ``malloc``. After many tensors of varying sizes (one
forward pass per batch of texts, one shard after another), glibc keeps most freed blocks in its heaps
instead of returning them, and a process's resident memory creeps up shard after shard (measured: 1.5 to
2.4 GB over eleven shards of one model, against a flat 1.1 GB when freed memory is returned after each
shard). :func:`return_freed_memory` asks glibc to give free heap pages back (``malloc_trim``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` where the C library has it (Linux with glibc), else None."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> bool:
    """Return the C heap's free pages to the operating system; True where the C library can (glibc).

    Costs a few milliseconds; call it between large units of work (a shard, a block of layer pairs).
    Never raises.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
