"""ShortGPT (Men et al., 2024): delete the decoder layers that change the residual stream least.

Layers are ranked by block influence ``BI_i = 1 - E_t[cos(h_i, h_{i+1})]`` on calibration
data, and the lowest ``round(ratio · L)`` are removed. What is left is an ordinary model
with fewer layers, so the saved folder is a plain transformers checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..analysis.layer_scores import block_influence
from ..calibration import CalibrationSpec
from ..errors import ConfigError
from ..models.adapters import Adapter
from ..progress import Reporter
from .base import Method, MethodOutput, Plan, Structure, register


@dataclass
class ShortGPTStructure(Structure):
    removed: list[int]
    original_layers: int
    transformers_checkpoint: bool = True


def _dropped(plan: Plan, num_layers: int) -> int:
    """How many layers the plan's target removes (all of them is refused)."""
    n_drop = round(plan.target * num_layers)
    if n_drop >= num_layers:
        raise ConfigError(f"Ratio {plan.target} would remove all {num_layers} layers; use a smaller ratio.")
    return n_drop


@register
class ShortGPT(Method):
    name = "shortgpt"
    label = "ShortGPT (remove layers)"
    paper = "https://arxiv.org/abs/2403.03853"
    removes = ("layers",)
    summary = (
        "Deletes whole layers: the ones whose output is most similar to their input on calibration text "
        "(lowest 'block influence'), so the model loses the layers that change its hidden state least. The ratio "
        "is the fraction of layers removed. Fast and simple, and the result is an ordinary, shorter model."
    )
    uses_plan = False
    removes_layers = True
    structure_type = ShortGPTStructure

    @torch.no_grad()
    def compress(self, work, calibration: CalibrationSpec, plan: Plan, params: dict, progress: Reporter) -> MethodOutput:
        adapter = work.adapter
        num_layers = work.num_layers
        n_drop = _dropped(plan, num_layers)
        t = time.perf_counter()
        if plan.schedule in ("block-influence", "searched") and plan.scores is not None:
            bi = list(plan.scores)  # the plan already ranked these layers on the same model (searched: 0 = drop)
        else:
            bi = block_influence(work.lm.model, adapter, calibration.tokens, calibration.batch_size, progress,
                                 source=work.originals)
        stages = {"block influence": time.perf_counter() - t}
        drop = sorted(sorted(range(num_layers), key=lambda i: bi[i])[:n_drop])
        kept = [i for i in range(num_layers) if i not in drop]
        for i in kept:
            work.close(i, work.open(i))
            progress.check()
        adapter.renumber_layers(work.model)
        adapter.set_num_layers(work.model.config, kept)
        return MethodOutput(
            widths={"layer_kept": [int(i not in drop) for i in range(num_layers)]},
            structure=ShortGPTStructure(drop, num_layers),
            stage_seconds=stages,
            plots={"block_influence": bi},
        )

    def plan_shapes(self, model, adapter, plan, params) -> bool:
        """Every layer has the same shapes, so dropping the first ``n`` says the size of dropping any ``n``."""
        layers = adapter.layers(model)
        n_drop = _dropped(plan, len(layers))
        adapter.set_num_layers(model.config, list(range(n_drop, len(layers))))
        del layers[:n_drop]
        return True

    def rebuild(self, model: nn.Module, adapter: Adapter, structure: ShortGPTStructure) -> None:
        """Nothing to do: the saved config already has the reduced layer count."""
