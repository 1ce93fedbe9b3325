"""Large blocks on glibc's heap while training on a CPU.

glibc serves a block above its mmap threshold (128 KB at first, raised by glibc itself up to 32 MB) by mapping fresh
pages, and unmaps them on free. A training step that builds a tensor larger than that anew at every step (the
language model's ``[32, 128, 4096]`` logits and their gradient: 64 MB each) then page-faults it in at every step:
through the trainer, 76,000 page faults and 0.20 s of system time in a 0.34-0.36 s step; with the blocks kept on the
heap 3,000-3,500 and 0.01 s, 0.22-0.24 s a step, the same weights, peak memory 0.95 -> 1.01-1.08 GB (an AVX2-only CPU,
2 threads; README, "A language model trained here").

:func:`large_blocks_on_heap` raises the mmap threshold to 1 GiB and stops trimming for as long as any training runs
(nested or concurrent runs share one setting), then sets glibc's own ceilings (32 MB, and 64 MB for trimming) and
hands the free memory back. glibc cannot report its settings, and any ``mallopt`` call fixes them for the rest of the
process (glibc no longer adjusts the threshold itself), so "afterwards" means those ceilings, not what was there
before. Nothing is changed where the allocator was tuned by the user (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``
with ``glibc.malloc.``), off CPUs, or under another C library.
"""

import contextlib
import ctypes
import functools
import os
import platform
import threading

import torch

__all__ = ["AFTER_TRAINING", "DURING_TRAINING", "glibc", "large_blocks_on_heap"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters (``malloc.h``)."""
DURING_TRAINING = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: (1 << 31) - 1}
AFTER_TRAINING = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}
"""glibc's ceilings for the thresholds it adjusts itself (``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit, and twice that)."""
_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_lock = threading.Lock()
_depth = 0
_set = False


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _user_tuned() -> bool:
    return (any(name in os.environ for name in _USER_VARIABLES)
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""))


@contextlib.contextmanager
def large_blocks_on_heap(device: torch.device | str):
    """Keep blocks of up to 1 GiB on glibc's heap inside the block, where ``device`` is a CPU (see the module)."""
    global _depth, _set
    libc = glibc() if torch.device(device).type == "cpu" and not _user_tuned() else None
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:  # an older glibc refuses a threshold above 32 MB: then leave everything as it is
            _set = bool(libc.mallopt(M_MMAP_THRESHOLD, DURING_TRAINING[M_MMAP_THRESHOLD]))
            if _set:
                libc.mallopt(M_TRIM_THRESHOLD, DURING_TRAINING[M_TRIM_THRESHOLD])
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _set:
                for param, value in AFTER_TRAINING.items():
                    libc.mallopt(param, value)
                libc.malloc_trim(0)
                _set = False
