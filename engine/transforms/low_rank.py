"""A linear replaced by two small ones, ``y = B·(A·x) + b``, fitted by an input-weighted SVD (Olica's Q/K).

Query and key cannot be merged into one low-rank product as value and output can: RoPE rotates
each token's query and key between the projection and the dot product. So each projection is
approximated on its own by the rank-r factorisation that keeps the most of its output on the
calibration data, to first order: the SVD of ``W·diag(‖x‖)`` (each input column scaled by its
calibration norm, as Wanda weighs a weight), ``= U Σ Vᵀ``, gives ``A = Σ^½ V_rᵀ diag(‖x‖)⁻¹`` and
``B = U_r Σ^½``. The projection's output keeps its full width, so RoPE, q/k norms, the softmax
scale and the KV cache run unchanged after it; at full rank it is exact.

``LowRankLinear`` is an ``nn.Linear`` subclass swapped onto the instance: the state dict keeps the
projection's name, with ``weight`` = B (out × r), its bias, and ``down.weight`` = A (r × in).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .replace import assign


class LowRankLinear(nn.Linear):
    """``F.linear(down(x), weight, bias)``: ``in_features`` stays the input width, ``weight`` is B."""

    down: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.down(x), self.weight, self.bias)

    @property
    def rank(self) -> int:
        return self.down.out_features

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, rank={self.rank}, out_features={self.out_features}"


def rank_for_ratio(out_features: int, in_features: int, ratio: float) -> int:
    """The rank whose two factors hold ``1 - ratio`` of the dense ``out × in`` parameters (at least 1)."""
    return max(1, int((1 - ratio) * out_features * in_features / (out_features + in_features)))


def saves_params(out_features: int, in_features: int, rank: int) -> bool:
    """Whether the factors at ``rank`` hold fewer parameters than the dense weight."""
    return rank * (out_features + in_features) < out_features * in_features


def weighted_factors(weight: torch.Tensor, in_norms: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [rank, in], B [out, rank]) float64: the top-``rank`` SVD of ``W·diag(‖x‖)``, mapped back."""
    scale = in_norms.to(weight.device, torch.float64)
    scale = scale.clamp_min(scale.max().clamp_min(1e-30) * 1e-8)  # a dead input channel is not divided by 0
    u, s, vt = torch.linalg.svd(weight.detach().double() * scale, full_matrices=False)
    root = s[:rank].sqrt()
    return root[:, None] * vt[:rank] / scale, u[:, :rank] * root


def make_low_rank(linear: nn.Linear, down: torch.Tensor, up: torch.Tensor) -> None:
    """Turn ``linear`` into a ``LowRankLinear`` holding ``A = down``, ``B = up`` (its bias kept), in its own
    dtype and device. Works on empty (meta) weights, where only the shapes matter."""
    device = linear.weight.device
    branch = nn.Linear(down.shape[1], down.shape[0], bias=False, device="meta")
    branch.weight = linear.weight  # a placeholder, so ``assign`` takes the projection's dtype and grad setting
    # contiguous: an SVD's factors are column-major views, and a saved and reloaded model (row-major)
    # must sum its products in the same order to give bit-identical logits
    assign(branch, "weight", down.to(device).contiguous())
    assign(linear, "weight", up.to(device).contiguous())
    linear.__class__ = LowRankLinear
    linear.add_module("down", branch)


def low_rank_shapes(linear: nn.Linear, rank: int) -> None:
    """Give ``linear`` the shapes of a rank-``rank`` ``LowRankLinear`` (empty weights: ``rebuild``)."""
    like = linear.weight
    make_low_rank(linear, like.new_empty(rank, linear.in_features), like.new_empty(like.shape[0], rank))
