"""Process-wide CPU settings that training speed depends on: where glibc keeps large freed blocks, and whether
denormal floats are flushed to zero.

**Large blocks.** Every training step allocates table-sized gradients (tens of MB for a 400-d teacher) and every
evaluation chunk a score block of up to 256 MB. glibc serves blocks above its mmap threshold (at most 32 MB by
default) with fresh ``mmap`` calls and unmaps them on free, so each step page-faults and zero-fills them again:
measured on CiteULike, a 400-d BPRMF epoch took 2.5 s this way and 1.4 s with the blocks kept. Raising the mmap and
trim thresholds with ``mallopt`` has the same effect as the documented ``MALLOC_MMAP_THRESHOLD_``/
``MALLOC_TRIM_THRESHOLD_`` variables, set from inside the process. Elsewhere (macOS, musl, Windows) this does
nothing.

**Denormals.** Values below 1.2e-38 in magnitude take a microcode path on x86 that is tens to hundreds of times
slower per operation. They arise in training: the experts of DE and HTD that the annealed Gumbel selection stops
choosing decay into that range, and at epoch 37 of the CiteULike grid's DE cell (200-d teacher, 30 experts) 0.2-0.4 %
of the expert weights were denormal and one step took 842 ms instead of 345 ms with them flushed to zero. Flushing
changes only values that small, far below anything a loss or a metric resolves.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = False


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Apply once per process; returns whether glibc accepted the settings."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and \
            bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):  # not glibc
        _done = False
    return _done


def flush_denormals() -> bool:
    """Flush denormal floats to zero on CPU (SSE FTZ/DAZ) from here on; returns whether the CPU supports it. Threads
    inherit the setting when they are created, so call it before the first parallel torch operation of a process
    (the intra-op thread pool); later calls still cover the calling thread."""
    return torch.set_flush_denormal(True)


def reset_peak_memory(device: torch.device | str | None = None) -> None:
    """Start a fresh peak-memory measurement, so that a worker process reused across grid cells reports each
    cell's own peak: freed heap pages go back to the OS (glibc ``malloc_trim``, which ``keep_freed_memory`` would
    otherwise keep) and the kernel's high-water mark is reset to the current RSS (``clear_refs`` 5, Linux ≥ 4.0);
    the CUDA peak of ``device`` is reset too. What the process still holds (the loaded dataset and teacher) stays
    in the peak, as it would in a fresh process. Elsewhere the RSS part does nothing."""
    gc.collect()
    if device is not None and getattr(device, "type", device) == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
