"""PCA eigenvalue spectra of the residual stream, layer by layer, on calibration data.

This is what SliceGPT-style methods exploit: if a few principal directions carry most of the
residual signal, the rest can be sliced away. The same single pass also yields block
influence per layer (how much each layer turns the residual), so the UI's Analyze view costs
one calibration pass, not two.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..models.adapters import Adapter
from ..progress import Reporter, as_reporter
from ..stats import LayerSource, ModelLayers, capture_layer_inputs, run_sequential
from ..stats import gram_of
from ..transforms.widths import sliced_width
from .layer_scores import InfluencePass, layer_redundancy


@dataclass
class ResidualAnalysis:
    """Spectra at every residual point (embeddings, then after each layer) and per-layer scores."""

    points: list[str]  # "embeddings", "after layer 0", ...
    eigenvalues: list[list[float]]  # per point, descending, second moment per token (uncentred)
    block_influence: list[float]  # per layer, mean 1 - cos(input, output)
    hidden_size: int
    tokens: int  # calibration tokens the statistics were computed on

    @property
    def layer_redundancy(self) -> list[float]:
        return layer_redundancy(self.block_influence)

    def explained(self) -> list[list[float]]:
        """Cumulative fraction of the signal's energy kept by the first k directions, per point."""
        out = []
        for values in self.eigenvalues:
            total = sum(values) or 1.0
            acc, row = 0.0, []
            for v in values:
                acc += v
                row.append(acc / total)
            out.append(row)
        return out

    def to_dict(self) -> dict:
        return asdict(self) | {"layer_redundancy": self.layer_redundancy}


def eigenvalues_of(tensors: list[torch.Tensor]) -> list[float]:
    """Eigenvalues (descending, clamped at 0) of the per-token uncentred second moment, float64."""
    g = gram_of(tensors)
    values = torch.linalg.eigvalsh(g.h / max(g.count, 1)).flip(0).clamp_min(0)
    return values.tolist()


class _SpectraPass(InfluencePass):
    """Read-only: the spectrum after every layer, with block influence on the same pass."""

    def __init__(self) -> None:
        super().__init__()
        self.spectra: list[list[float]] = []

    def start(self, hidden):
        self.spectra.append(eigenvalues_of(hidden))
        return hidden

    def end_layer(self, index, layer, inputs, outputs) -> None:
        super().end_layer(index, layer, inputs, outputs)
        self.spectra.append(eigenvalues_of(outputs))


def residual_analysis(model: nn.Module, adapter: Adapter, tokens: torch.Tensor, batch_size: int = 8,
                      progress: "Reporter | None" = None, source: "LayerSource | None" = None) -> ResidualAnalysis:
    """One read-only pass, layer by layer: spectrum of every residual point and block influence."""
    hooks = _SpectraPass()
    inputs = capture_layer_inputs(model, adapter, tokens, batch_size)
    run_sequential(inputs, adapter, source or ModelLayers(model, adapter), hooks, as_reporter(progress),
                   "residual spectra")
    points = ["embeddings"] + [f"after layer {i}" for i in range(len(hooks.scores))]
    return ResidualAnalysis(points=points, eigenvalues=hooks.spectra, block_influence=hooks.scores,
                            hidden_size=len(hooks.spectra[0]), tokens=inputs.num_tokens)


def cut_width(hidden: int, ratio: float, multiple: int = 8) -> int:
    """The residual width a slicing ratio keeps (SliceGPT's rounding), to mark on spectra."""
    return sliced_width(hidden, ratio, multiple)
