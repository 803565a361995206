"""Per-layer scores from one calibration pass: block influence and layer redundancy.

Block influence (ShortGPT) ``BI_i = 1 - E_t[cos(h_i, h_{i+1})]``: how much layer i turns
the residual stream. Layer redundancy (dynamic slicing) is BI min-max normalised and
inverted, so 1 marks the most redundant layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.adapters import Adapter
from ..progress import Reporter, as_reporter
from ..stats import LayerHooks, LayerSource, ModelLayers, capture_layer_inputs, run_sequential


class InfluencePass(LayerHooks):
    """Read-only: block influence of every layer as the driver passes it."""

    observes_layers = True

    def __init__(self) -> None:
        self.scores: list[float] = []

    def end_layer(self, index, layer, inputs, outputs) -> None:
        self.scores.append(influence(inputs, outputs))


def block_influence(model: nn.Module, adapter: Adapter, tokens: torch.Tensor, batch_size: int = 8,
                    progress: "Reporter | None" = None, source: "LayerSource | None" = None) -> list[float]:
    """Mean ``1 - cos(input, output)`` over calibration tokens, per layer (read-only)."""
    hooks = InfluencePass()
    inputs = capture_layer_inputs(model, adapter, tokens, batch_size)
    run_sequential(inputs, adapter, source or ModelLayers(model, adapter), hooks, as_reporter(progress),
                   "layer scores")
    return hooks.scores


def influence(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """``1 - cos(input, output)`` averaged over every token of every batch (float64)."""
    total, count = 0.0, 0
    for h_in, h_out in zip(inputs, outputs):
        cos = F.cosine_similarity(h_in.double(), h_out.double(), dim=-1)
        total += (1 - cos).sum().item()
        count += cos.numel()
    return total / count


def layer_redundancy(bi: list[float]) -> list[float]:
    """``LR_i = 1 - (BI_i - min BI) / (max BI - min BI)`` in [0, 1]; higher = more redundant."""
    lo, hi = min(bi), max(bi)
    if hi - lo < 1e-12:
        return [1.0 for _ in bi]
    return [1 - (b - lo) / (hi - lo) for b in bi]
