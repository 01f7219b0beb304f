"""The training process's memory on Linux/glibc: freed heap handed back, the peak resident size.

(A fixed 1 MiB mmap threshold used to serve every activation by its own mmap: 100-190 MB
lower peak RSS, but every step then faulted its activations in afresh, and on a 2-core Xeon
with AMX training ran 5-9% slower (20% in a micro-benchmark); dropped, docs/training.md.)"""

from __future__ import annotations

import contextlib
import resource


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise)."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
