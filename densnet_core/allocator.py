"""Keep freed memory in the process for reuse (glibc ``mallopt``), for batched inference.

A forward pass of the density network over a batch of 64 drug-like molecules allocates and
frees tensors of 10-100 MB (per-edge radial weights and neighbour tables). glibc serves every
allocation above its mmap threshold (at most 32 MB, adjusted at run time) with a fresh
``mmap`` and returns it to the kernel on ``free``; the next batch then page-faults the same
amount of zeroed memory back in. On this project's 2-core machine that page faulting took a
quarter of the forward pass: 1,017 ChEMBL molecules on one thread, three alternating pairs of
fresh processes, gave 43.2-49.6 mol/s (20.5-23.4 CPU-s) with glibc's defaults and
59.0-72.3 mol/s (14.1-17.2 CPU-s) with the settings below, the other core idle; 40.4-46.9 vs
56.6-66.7 mol/s with a training job on the other core.

:func:`retain_freed_memory` raises the mmap and trim thresholds, so large blocks come from
the heap and stay there once freed: the process keeps its peak footprint instead of
returning it (~1 GB at batch size 64), which is what a batched inference run wants. It is a
process-wide setting, inherited by forked workers, and a no-op where glibc is not the C
library (macOS, Windows, musl). The CLI sets it before importing torch; every
:class:`~densnet_core.predict.Predictor` sets it too, unless told not to.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD_BYTES = 1 << 30


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only; musl has mallopt as a stub
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


@functools.cache
def retain_freed_memory() -> bool:
    """Serve allocations up to 1 GiB from the heap and keep freed memory for reuse.

    Returns
    -------
    bool
        True when glibc accepted both settings (Linux with glibc), False otherwise.
    """
    libc = _glibc()
    if libc is None:
        return False
    ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES) == 1
    ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD_BYTES) == 1
    return ok_mmap and ok_trim
