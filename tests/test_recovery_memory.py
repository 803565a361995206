"""Recovery's memory: frozen weights mapped from safetensors files leave the resident set after their layer's
use, unchanged; activations freed during training go back to the OS instead of fragmenting the heap."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from engine.memory import free_heap_bytes, keep_freed_memory
from engine.models.streaming import read_tensors
from engine.recovery.paging import FrozenPages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")
MB = 2**20


def _rss_file_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile")


def _mapped_linear(tmp_path: Path, name: str, rows: int = 2048) -> nn.Linear:
    """A frozen linear whose 8 MB weight is mapped from a safetensors file, as a spooled layer's is."""
    path = tmp_path / f"{name}.safetensors"
    save_file({"w": torch.randn(rows, 1024, generator=torch.Generator().manual_seed(0))}, str(path))
    layer = nn.Linear(1024, rows, bias=False)
    layer.weight = nn.Parameter(read_tensors({"w": path}, {"w": "w"}, torch.float32)["w"], requires_grad=False)
    return layer


def test_released_pages_leave_the_resident_set_and_come_back_unchanged(tmp_path):
    layer = _mapped_linear(tmp_path, "a")
    pages = FrozenPages(nn.ModuleList([layer]))
    assert pages.nbytes > 7.9 * MB  # all but the pages at the edges
    total = float(layer.weight.double().sum())  # touches every page
    before = _rss_file_mb()
    pages.release(0)
    assert _rss_file_mb() < before - 7  # MB
    assert float(layer.weight.double().sum()) == total


def test_written_trained_or_anonymous_weights_are_never_released(tmp_path):
    written = _mapped_linear(tmp_path, "b")
    written.weight.data[:4].mul_(2.0)  # a copy-on-write page: its mapping now holds a written page
    trained = _mapped_linear(tmp_path, "c").requires_grad_(True)
    anonymous = nn.Linear(1024, 2048, bias=False).requires_grad_(False)
    pages = FrozenPages(nn.ModuleList([written, trained, anonymous]))
    assert pages.ranges == [[], [], []]
    kept = written.weight.clone()
    pages.release_all()
    assert torch.equal(written.weight, kept)


FREED_INTO_HEAP = """
import torch
from engine.memory import free_heap_bytes, keep_freed_memory, mapped_allocations

def freed_into_heap_mb():
    big, small = [], []
    for _ in range(40):
        big.append(torch.ones(1024, 1024))
        small.append(torch.ones(64))
    before = free_heap_bytes()
    del big
    return (free_heap_bytes() - before) / 2**20

keep_freed_memory()
with mapped_allocations():
    inside = freed_into_heap_mb()
print(inside, freed_into_heap_mb())
"""


@pytest.mark.skipif(free_heap_bytes() is None or not keep_freed_memory(), reason="needs glibc 2.33+")
def test_freed_activations_leave_the_process_inside_mapped_allocations():
    """How much the C heap's free space grows (MB) when 40 activation-sized tensors (4 MB), each with a small
    survivor made after it (the backward pass's pattern), are freed: inside ``mapped_allocations`` and after it.
    In a fresh process, since a long test run's heap (up to 1 GB kept free, then trimmed) changes the figure."""
    out = subprocess.run([sys.executable, "-c", FREED_INTO_HEAP], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1], check=True).stdout
    inside, after = (float(x) for x in out.split())
    assert inside < 80  # mapped: they go back to the OS (blocks freed before may be reused: at most a few)
    assert after > 150  # the engine's setting again: the heap keeps them
