"""Peak memory of a stage (resident set size on CPU, max allocated on CUDA), and the C heap setting
that keeps layer-wise passes from paying for fresh pages over and over."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import resource
from pathlib import Path
from typing import Callable, Iterator

import torch

from .errors import SlimLabError


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM (peak RSS)
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed: one [4096 tokens, 2048] float32 activation
TRIM_THRESHOLD = 2**30


def _glibc(name: str) -> "Callable | None":
    """glibc's function ``name``; None where the C library has none (macOS, musl, Windows, old glibc)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):
        return None


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc keep freed heap memory for reuse instead of handing it back to the OS at once.

    A layer-wise pass allocates and frees the same tens-of-MB activation buffers thousands of
    times. With glibc's defaults most of them come back as fresh pages that the kernel must
    fault in and zero: about 700K page faults and 8% of a FASP run on the demo model. With a
    fixed 32 MB mmap threshold and a 1 GB trim threshold they are reused from the heap; the
    process may hold up to 1 GB of freed memory. Once per process; False where there is no
    glibc (macOS, musl, Windows)."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


TRAINING_MMAP_THRESHOLD = 128 * 2**10  # glibc's own starting value, here held fixed


@contextlib.contextmanager
def mapped_allocations(threshold: int = TRAINING_MMAP_THRESHOLD) -> Iterator[None]:
    """While the block runs, every C allocation of at least ``threshold`` bytes gets its own mapping,
    handed back to the OS when it is freed (glibc's ``M_MMAP_THRESHOLD``); then ``keep_freed_memory``'s
    setting again.

    Why: a training step's backward pass recomputes each layer's activations and frees them, while
    small tensors that live on (the next layer's gradients, the layer inputs kept for the backward
    pass) are allocated between them; from the heap, the freed blocks cannot be merged or handed back
    and the heap grows by about one layer's activations per layer (LoRA on a random demo-shaped model
    of 8 layers, 2 steps of 4x512 tokens: 335 MB over the start, 303 MB of it free heap; with this,
    110 MB and the same losses). Training runs seconds per window, so the extra page faults cost
    little there, unlike in the layer-wise passes ``keep_freed_memory`` is for."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        yield
        return
    mallopt(M_MMAP_THRESHOLD, threshold)
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def free_heap_bytes() -> "int | None":
    """Bytes the C heap holds free (glibc's ``mallinfo2().fordblks``); None without glibc 2.33+."""
    mallinfo2 = _glibc("mallinfo2")
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().fordblks)


def release_freed_memory(keep_bytes: int = 0) -> bool:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``) once it holds more
    than ``keep_bytes`` free.

    ``keep_freed_memory`` keeps freed buffers for the next batch; between layers the shapes of
    the next layer's buffers rarely fit the holes, and without trimming the heap crept up by
    about a fifth of a layer per layer on a 1.1B model. But a trim also gives back the pool
    the next layer would reuse, and faulting it in again cost about 10% of a SliceGPT run on
    the demo model; so a caller passes its working set as ``keep_bytes`` and only the creep
    beyond it is trimmed. False when nothing was trimmed or there is no glibc."""
    free = free_heap_bytes()
    if free is not None and free <= keep_bytes:
        return False
    trim = _glibc("malloc_trim")
    return trim is not None and bool(trim(0))

EVAL_OOM_ADVICE = "Use a shorter --seqlen, fewer windows or items, or the CPU; the model is unchanged."
CALIBRATION_OOM_ADVICE = ("Use fewer or shorter calibration samples (Samples, Tokens per sample; --nsamples, "
                          "--seqlen), or the CPU; the model is unchanged.")


@contextlib.contextmanager
def out_of_memory_as_error(what: str, advice: str) -> Iterator[None]:
    """torch's out-of-memory error as one message that says what ran out of memory and what to try;
    also a decorator. Nothing the caller passed in (the original model above all) has changed by then."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise SlimLabError(f"Out of memory while {what} ({str(exc).splitlines()[0][:160]}). {advice}") from None
