"""Hand a frozen layer's mapped weight pages back to the kernel once the layer is done with them.

A streamed compression's layers are read back from the spool for training, and safetensors
maps their files (copy-on-write) instead of copying them. A mapped page counts in the process's
resident memory from its first touch until the mapping ends, so after one training window every
frozen weight of the student is resident, although one layer works at a time: 350 MB on the
demo with LoRA. ``FrozenPages.release(i)`` drops layer ``i``'s pages from the process with
``madvise(MADV_DONTNEED)``: they stay in the page cache, and the next touch maps them again
without reading the disk, so the values and the numerics are the same; only the resident set
shrinks to about the layer at work.

DONTNEED on a page that was written (copy-on-write, or anonymous memory) would lose its
contents, so a tensor qualifies only when it is frozen (no gradient), lies inside a file
mapping and that mapping holds no written page at setup (smaps ``Anonymous: 0``); nothing
writes a frozen weight while the student trains (LoRA merges after the last step). Elsewhere
than Linux, or when nothing qualifies, it does nothing.
"""
from __future__ import annotations

import ctypes
import mmap
from pathlib import Path
from typing import Optional

from torch import nn

MADV_DONTNEED = 4  # Linux
PAGE = mmap.PAGESIZE


def _clean_file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's file-backed mappings that hold no written page."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return []
    out, current = [], None
    for line in text.splitlines():
        head = line.split(None, 5)
        if "-" in head[0] and not head[0].endswith(":"):  # "start-end perms offset dev inode [path]"
            path = head[5] if len(head) > 5 else ""
            start, end = (int(x, 16) for x in head[0].split("-"))
            current = (start, end) if path.startswith("/") and head[4] != "0" else None
        elif head[0] == "Anonymous:" and current is not None:
            if int(head[1]) == 0:
                out.append(current)
            current = None
    return out


def _inner_pages(ptr: int, nbytes: int, mappings: list[tuple[int, int]]) -> Optional[tuple[int, int]]:
    """(address, length) of the whole pages inside [ptr, ptr + nbytes) when a clean file mapping holds them."""
    if not any(start <= ptr and ptr + nbytes <= end for start, end in mappings):
        return None
    first, last = -(-ptr // PAGE) * PAGE, (ptr + nbytes) // PAGE * PAGE
    return (first, last - first) if last > first else None


class FrozenPages:
    """Each layer's frozen, mapped, unwritten weight pages, to be released after the layer's use."""

    def __init__(self, layers: nn.ModuleList):
        mappings = _clean_file_mappings()
        self.ranges: list[list[tuple[int, int]]] = []
        for layer in layers:
            spans = [_inner_pages(p.data_ptr(), p.numel() * p.element_size(), mappings) if mappings else None
                     for p in layer.parameters() if not p.requires_grad and p.device.type == "cpu"]
            self.ranges.append([s for s in spans if s is not None])
        self._madvise = _madvise() if any(self.ranges) else None

    @property
    def nbytes(self) -> int:
        return sum(length for spans in self.ranges for _, length in spans)

    def release(self, index: int) -> None:
        if self._madvise is not None:
            for address, length in self.ranges[index]:
                self._madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), MADV_DONTNEED)

    def release_all(self) -> None:
        for index in range(len(self.ranges)):
            self.release(index)


def _madvise():
    try:
        return ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError, TypeError):
        return None
