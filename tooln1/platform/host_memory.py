"""Host allocator setting for JAX on a CPU: keep freed memory for the next step instead of unmapping it.

XLA:CPU allocates a program's temporary buffers at every call. glibc serves a large allocation with a
fresh ``mmap`` (anything over 32 MB, and anything over 64 MB made from a thread's secondary arena,
which is where XLA's worker threads allocate) and unmaps it on free, so each GRPO update faults its
gigabytes of temporaries back in one zeroed 4 KiB page at a time (docs/benchmarks.md has the cost).

The price: the process keeps its peak resident memory instead of returning it to the system, and
programs without large temporaries gain nothing and may lose (rollouts alone ran slower). So
``tooln1-train`` sets it (updates dominate a GRPO step's temporaries) and ``tooln1-eval`` does not.
It is applied only when JAX will run on the CPU, and ``TOOLN1_KEEP_FREED_MEMORY=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os

# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def jax_runs_on_cpu() -> bool:
    """Whether JAX's default platform will be the CPU, decided without initialising JAX: the first of
    ``JAX_PLATFORMS`` when set, otherwise no accelerator plugin (``jax_plugins``, libtpu) installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in ("jax_plugins", "libtpu"))


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory (one arena, no mmap, no trimming); returns whether it did.

    Call it first thing in a process, before JAX (or any library) has started threads: the arena
    limit binds only threads that have not allocated yet. A no-op off glibc, when JAX will run on an
    accelerator, or with ``TOOLN1_KEEP_FREED_MEMORY=0``.
    """
    if os.environ.get("TOOLN1_KEEP_FREED_MEMORY", "1") == "0" or not jax_runs_on_cpu():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # The trim threshold is a size_t that mallopt takes as an int: -1 is SIZE_MAX, i.e. never trim.
    return all(mallopt(param, value) == 1 for param, value in
               ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))


__all__ = ["jax_runs_on_cpu", "keep_freed_memory"]
