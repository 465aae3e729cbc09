"""Settings of the CPU memory allocator for processes that run vqfast's heavy jobs.

PyTorch's CPU tensors come from the C library's malloc. By default glibc hands out each
block over its mmap threshold (128 KiB at start, rising to at most 32 MiB as blocks are
freed) as fresh memory from the OS and returns it at free. A convolution's or attention's
activations are blocks of megabytes that are allocated again on every call, so the kernel
pages each of them in again, one page fault per 4 KiB. On 2 cores of an AMD EPYC
(benchmarks/cpu_allocator.py, allocator left alone against tuned here) a VQ-GAN training
step (16 images of 128 x 128, LPIPS on) took 10.5 s instead of 6.9 s, with 1.5 million page
faults instead of 33,000; the VQ-VAE's step 1.16x and the GPT-2 prior's 1.31x faster, whole
scorers 1.02-1.12x. CPU performance guides for PyTorch recommend preloading jemalloc or
tcmalloc for this; the remedy here stays inside glibc, with nothing to install.

``tune_cpu_allocator`` raises the mmap threshold to 1 GiB and stops returning the top of
the heap to the OS, so freed activations are reused. The cost: the process keeps the memory
of its largest step until it exits instead of giving it back between steps, and freed
blocks of other sizes fragment the heap: peak resident memory rose 9-21 % in those runs.
The setting is process-wide, so only ``vqfast``'s command line calls it for itself (and
each torchrun worker, which runs the same command line); a script using the library can
call it, and ``VQFAST_MALLOC=default`` in the environment turns it off.
"""

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 2**31 - 1  # an int: mallopt takes one

_state = {"tuned": None}


def _skip_reason():
    if os.environ.get("VQFAST_MALLOC", "") == "default":
        return "VQFAST_MALLOC=default"
    if not sys.platform.startswith("linux"):
        return f"not glibc ({sys.platform})"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "another allocator is preloaded (LD_PRELOAD)"
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "malloc is already configured by the environment"
    return None


def tune_cpu_allocator() -> bool:
    """Set glibc malloc's mmap threshold to 1 GiB and its trim threshold to 2 GiB, for
    this whole process (see the module docstring); once. Returns whether it took effect:
    False where the platform is not glibc's, where the environment configures malloc
    itself (LD_PRELOAD of jemalloc / tcmalloc / mimalloc, MALLOC_MMAP_THRESHOLD_,
    GLIBC_TUNABLES) or where VQFAST_MALLOC=default asks to leave it alone."""
    if _state["tuned"] is None:
        _state["tuned"] = False
        if _skip_reason() is None:
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                _state["tuned"] = ok and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            except (OSError, AttributeError):
                pass
    return _state["tuned"]


def allocator_status() -> str:
    """One line for ``vqfast info``: what the CPU allocator of this process is set to."""
    if _state["tuned"]:
        return f"glibc malloc, mmap threshold {MMAP_THRESHOLD >> 20} MiB (vqfast's setting)"
    reason = _skip_reason()
    return f"left as it is ({reason})" if reason else "left as it is (not tuned in this process)"
