"""Gram matrices ``Σ xᵀx`` of activations, accumulated over calibration batches in float64."""
from __future__ import annotations

import torch


class Gram:
    """Accumulates ``Σ xᵀx`` over token batches in a float64 accumulator.

    Each batch's product is computed in float32 (a few thousand tokens: relative error ~1e-6)
    and added in float64: a float64 GEMM over 32K tokens costs 3x more on a CPU, and the
    eigenvectors that survive slicing do not move at that precision. Only the upper block
    triangle is computed (the matrix is symmetric): about a third less work than ``xᵀx``."""

    BLOCK = 128  # columns per block product: large enough to keep the GEMMs efficient

    def __init__(self, dim: int, device: "torch.device | str" = "cpu"):
        self._upper = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self._full: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        for start in range(0, x.shape[1], self.BLOCK):
            stop = start + self.BLOCK
            self._upper[start:stop, start:] += (x[:, start:stop].T @ x[:, start:]).double()
        self.count += x.shape[0]
        self._full = None

    @property
    def h(self) -> torch.Tensor:
        """The symmetric ``Σ xᵀx`` (float64)."""
        if self._full is None:
            upper = torch.triu(self._upper)
            self._full = upper + torch.triu(upper, 1).T
        return self._full


def gram_of(tensors: list[torch.Tensor]) -> Gram:
    g = Gram(tensors[0].shape[-1], tensors[0].device)
    for t in tensors:
        g.add(t)
    return g
