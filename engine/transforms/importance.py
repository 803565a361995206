"""Importance scores for the intermediate channels of a linear pair (Torch-Pruning style).

A score is a function of the pair's second matrix (the *writer*, whose input columns are the
channels) and the calibration statistics of its input; higher means keep. Pair pruning takes
one by name, so a new score is a new entry here, not a new method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:  # statistics are built on transforms.pca: no runtime import back into stats
    from ..stats import InputStats

ScoreFn = Callable[[torch.Tensor, "InputStats"], torch.Tensor]


@dataclass(frozen=True)
class Importance:
    name: str
    help: str
    fn: ScoreFn  # (writer weight [out, channels], input stats) -> float64 score per channel
    gram: bool = False  # the statistics it needs
    sums: bool = False


def _abs_column_sums(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().double().abs().sum(0)


def wanda(weight: torch.Tensor, stats: "InputStats") -> torch.Tensor:
    """Wanda summed over a column: ``s_j = ‖W_{:,j}‖₁ · ‖X_j‖₂`` (FASP, Wanda-SP)."""
    return _abs_column_sums(weight) * stats.norms.to(weight.device, torch.float64)


def magnitude(weight: torch.Tensor, stats: "InputStats") -> torch.Tensor:
    """``‖W_{:,j}‖₁``: weights alone, the data-free baseline."""
    return _abs_column_sums(weight)


def fluctuation(weight: torch.Tensor, stats: "InputStats") -> torch.Tensor:
    """FLAP: ``‖W_{:,j}‖₂² · Var(X_j)``, how much removing channel j moves the output around its mean."""
    mean = stats.sum / stats.count
    var = (stats.norms.square() / stats.count - mean.square()).clamp_min(0)
    return weight.detach().double().square().sum(0) * var.to(weight.device)


def ridge_leverage(weight: torch.Tensor, stats: "InputStats", ridge: float = 1e-2) -> torch.Tensor:
    """Nyström (MoDeGPT): ``diag(C (C + λI)⁻¹)`` of the input Gram ``C``, ``λ = ridge·mean diag C``."""
    c = stats.gram.h
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    return torch.diagonal(torch.linalg.solve(c + ridge * torch.diagonal(c).mean() * eye, c)).to(weight.device)


def pair_channel_scores(readers: list[torch.Tensor], in_norms: torch.Tensor, writers: list[torch.Tensor],
                        inner_norms: list[torch.Tensor]) -> torch.Tensor:
    """Olica's (and LLM-Pruner's) Wanda score of the channels between readers and writers, float64:
    ``s_j = Σ_r ‖W_r[j,:] ∘ ‖X‖‖₂ + Σ_w ‖W_w[:,j]‖₂·‖A_w,j‖₂``, each reader's row weighted by the norms
    of the inputs it reads, each writer's column by the norm of the channel it reads (``inner_norms``,
    one per writer: under GQA a value dim feeds one output block per query head of its group)."""
    x = in_norms.double()
    score = sum((r.double() * x).norm(dim=1) for r in readers)
    return score + sum(w.double().norm(dim=0) * a.double() for w, a in zip(writers, inner_norms))


SCORES: dict[str, Importance] = {s.name: s for s in (
    Importance("wanda", "‖W_:,j‖₁·‖X_j‖₂ (FASP, Wanda-SP)", wanda),
    Importance("magnitude", "‖W_:,j‖₁, no calibration statistics", magnitude),
    Importance("fluctuation", "‖W_:,j‖₂²·Var(X_j) (FLAP)", fluctuation, sums=True),
    Importance("ridge-leverage", "ridge leverage of the input Gram (MoDeGPT's Nyström)", ridge_leverage, gram=True),
)}
