"""PCA bases of the residual stream: eigh of the uncentred second moment (float64), descending."""
from __future__ import annotations

import contextlib

import torch


def pca_basis(h: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues descending, eigenvectors as columns) of ``h + damp*mean(diag)*I``.

    Damping keeps eigh stable on rank-deficient statistics without moving eigenvectors."""
    h = h.to(torch.float64)
    h = h + damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    with single_thread(h.device):
        values, vectors = torch.linalg.eigh(h)
    order = torch.argsort(values, descending=True)
    return values[order], vectors[:, order]


@contextlib.contextmanager
def single_thread(device: torch.device):
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
