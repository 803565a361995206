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
        # one matrix: the upper block triangle while accumulating, the full matrix once read
        self._m = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self._full = False
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        if self._full:  # back to the upper triangle; diagonal blocks are re-mirrored from it when read
            self._m.triu_()
            self._full = False
        x = x.reshape(-1, x.shape[-1]).float()
        for start in range(0, x.shape[1], self.BLOCK):
            stop = start + self.BLOCK
            self._m[start:stop, start:] += (x[:, start:stop].T @ x[:, start:]).double()
        self.count += x.shape[0]

    @property
    def h(self) -> torch.Tensor:
        """The symmetric ``Σ xᵀx`` (float64), made in place block by block: a second d×d copy
        would double the largest allocation of a pass (254 MB at d = 5632)."""
        if not self._full:
            m, n = self._m, self._m.shape[0]
            for start in range(0, n, self.BLOCK):
                stop = min(start + self.BLOCK, n)
                diag = m[start:stop, start:stop]
                diag.copy_(torch.triu(diag) + torch.triu(diag, 1).T)  # the upper values win, as before
                m[stop:, start:stop] = m[start:stop, stop:].T
            self._full = True
        return self._m


def gram_of(tensors: list[torch.Tensor]) -> Gram:
    g = Gram(tensors[0].shape[-1], tensors[0].device)
    for t in tensors:
        g.add(t)
    return g
