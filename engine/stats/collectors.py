"""Calibration statistics of the inputs of chosen linears, shared by methods and analysis.

``bypassed`` replaces a linear by the identity, so a pass *returns* its input and skips its
matmul (pruning methods need the input of ``down_proj``/``o_proj``, not their output, before
deciding what to keep).

``InputStats`` accumulates in float64 (per-batch float32 partials, like ``stats.gram.Gram``):
per-channel squared norms always; the Gram matrix ``XᵀX`` and the column sums (the ones
column of a bias refit) on request. The Gram is
accumulated during the pass rather than the inputs kept: no copy of the activations, and
its symmetric product is cheaper than the cross product a restoration would need later.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Optional

import torch
from torch import nn

from .gram import Gram


class InputStats:
    """What one linear saw over the calibration tokens (rows = tokens)."""

    def __init__(self, dim: int, device: "torch.device | str" = "cpu", gram: bool = False, sums: bool = False):
        self.dim = dim
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device) if sums else None
        self.sq_sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.gram: Optional[Gram] = Gram(dim, device) if gram else None

    @classmethod
    def of(cls, batches: list[torch.Tensor], gram: bool = False, sums: bool = False) -> "InputStats":
        stats = cls(batches[0].shape[-1], batches[0].device, gram=gram, sums=sums)
        for x in batches:
            stats.add(x)
        return stats

    def add(self, x: torch.Tensor) -> None:
        """Per-batch sums in float32 (a few thousand rows), accumulated in float64: converting
        every batch to float64 first costs more than the layer's forward pass on a CPU."""
        x = x.detach().reshape(-1, x.shape[-1])
        x32 = x.float()
        if self.sum is not None:
            self.sum += x32.sum(0).double()
        if self.gram is not None:
            self.gram.add(x32)  # its diagonal gives the squared norms
        else:
            self.sq_sum += (x32 * x32).sum(0).double()
        self.count += x.shape[0]

    @property
    def norms(self) -> torch.Tensor:
        """``‖X_j‖₂`` per input channel (Wanda's activation norm)."""
        sq = torch.diagonal(self.gram.h) if self.gram is not None else self.sq_sum
        return sq.clamp_min(0).sqrt()


def _parent_of(root: nn.Module, module: nn.Module) -> tuple[nn.Module, str]:
    for sub in root.modules():
        for attr, child in sub.named_children():
            if child is module:
                return sub, attr
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}.")


@contextlib.contextmanager
def _swapped(root: nn.Module, replacements: Mapping[nn.Module, nn.Module]) -> Iterator[None]:
    places = [(_parent_of(root, old), old, new) for old, new in replacements.items()]
    for (parent, attr), _old, new in places:
        setattr(parent, attr, new)
    try:
        yield
    finally:
        for (parent, attr), old, _new in places:
            setattr(parent, attr, old)


@contextlib.contextmanager
def bypassed(root: nn.Module, *modules: nn.Module) -> Iterator[None]:
    """Replace ``modules`` under ``root`` by the identity for the duration: a pass then returns
    the input of its last linear instead of its output, without computing that matmul."""
    with _swapped(root, {m: nn.Identity() for m in modules}):
        yield
