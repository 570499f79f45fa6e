"""Giving freed heap memory back to the operating system between training phases.

glibc keeps freed blocks below its mmap threshold in its heaps (one per thread that
allocated), so after a phase with many mid-sized temporaries (a backbone's activations) the
resident size stays high although the memory is free. ``malloc_trim`` returns it. Elsewhere
(macOS, musl, Windows) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Return free heap pages to the OS where the C library supports it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
