"""PCA bases of the residual stream: uncentred second moment in float64, eigh, descending."""
from __future__ import annotations

import contextlib

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

    def basis(self, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
        return pca_basis(self.h, damp)


def pca_basis(h: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues descending, eigenvectors as columns) of ``h + damp*mean(diag)*I``.

    Damping keeps eigh stable on rank-deficient statistics without moving eigenvectors."""
    h = h.to(torch.float64)
    h = h + damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    with _single_thread(h.device):
        values, vectors = torch.linalg.eigh(h)
    order = torch.argsort(values, descending=True)
    return values[order], vectors[:, order]


def gram_of(tensors: list[torch.Tensor]) -> Gram:
    g = Gram(tensors[0].shape[-1], tensors[0].device)
    for t in tensors:
        g.add(t)
    return g


@contextlib.contextmanager
def _single_thread(device: torch.device):
    """LAPACK's eigh on a few hundred columns runs 2-3x faster on one CPU thread than on two
    (the threads fight over the OpenMP pool the matmuls just left spinning)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
