"""Allocator settings for relaying large messages."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

# With glibc's defaults, freed large blocks go back to the kernel, so every
# large message maps fresh pages: the benchmark suite counted about 1,000 page
# faults per 1 MB result. Serving such blocks from the heap and keeping freed
# memory up to these sizes removes those faults. The price is that up to
# TRIM_THRESHOLD_BYTES of freed memory stays in the process.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024
TOP_PAD_BYTES = 16 * 1024 * 1024


def tune_allocator() -> bool:
    """Apply the settings above where the C library is glibc; return whether they were applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    applied = all(
        mallopt(parameter, value) == 1
        for parameter, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
            (_M_TOP_PAD, TOP_PAD_BYTES),
        )
    )
    if not applied:
        logger.debug("mallopt rejected the allocator settings; keeping the C library's defaults")
    return applied
