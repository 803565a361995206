"""Choosing a least-squares refit's damping from the data: generalized cross-validation (GCV).

A fixed damping (a fraction of the mean diagonal) fits one model and one calibration size:
with few tokens per column the kept-channel Gram is near singular and the refit overfits the
calibration text; with many tokens the same damping biases a well-posed fit. GCV (Golub,
Heath & Wahba, 1979) estimates the leave-one-out error of a ridge fit from the fit alone,

    GCV(λ) = RSS(λ) / (1 - df(λ)/n)²,   df(λ) = Σ sᵢ/(sᵢ+λ),

and every term comes from the normal equations we already form: with ``A = V diag(s) Vᵀ``
(the kept Gram) and ``B = Vᵀ Rᵀ`` (the right side in that eigenbasis),
``RSS(λ) = ‖Y‖² - 2 Σ bᵢ/(sᵢ+λ) + Σ sᵢ bᵢ/(sᵢ+λ)²`` with ``bᵢ = ‖Bᵢ‖²``. One eigendecomposition
then scores a whole grid of dampings, and no token is held out of the fit.
"""
from __future__ import annotations

import torch

# relative dampings (fractions of the mean diagonal) GCV chooses among
GRID = torch.logspace(-6, 1, 36, dtype=torch.float64)


def gcv_damping(a: torch.Tensor, rhs: torch.Tensor, target_energy: float, count: int,
                grid: torch.Tensor = GRID) -> float:
    """The relative damping of ``grid`` with the lowest GCV score for the ridge system
    ``(a + λI) βᵀ = rhsᵀ`` fitted on ``count`` rows whose targets have total energy
    ``target_energy`` (``‖Y‖²``); ``λ = damping · mean diag a``."""
    s, v = torch.linalg.eigh(a)
    s = s.clamp_min(0.0)
    b = ((v.T @ rhs.T) ** 2).sum(1)  # energy of the right side along each eigenvector
    lam = grid.to(a.device, a.dtype)[:, None] * torch.diagonal(a).mean()
    denom = s[None] + lam
    rss = target_energy - 2 * (b / denom).sum(1) + (s * b / denom ** 2).sum(1)
    df = (s / denom).sum(1)
    score = rss.clamp_min(0.0) / (1.0 - df / count).clamp_min(1e-12) ** 2
    return float(grid[int(torch.argmin(score))])
