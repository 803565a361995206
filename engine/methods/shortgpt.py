"""ShortGPT (Men et al., 2024): delete the decoder layers that change the residual stream least.

Layers are ranked by block influence ``BI_i = 1 - E_t[cos(h_i, h_{i+1})]`` on calibration
data, and the lowest ``round(ratio · L)`` are removed. What is left is an ordinary model
with fewer layers, so the saved folder is a plain transformers checkpoint.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..analysis.layer_scores import block_influence
from ..errors import ConfigError
from ..models.adapters import Adapter
from ..progress import Reporter
from .base import Calibration, Method, MethodOutput, Plan, register


def remove_layers(model: nn.Module, adapter: Adapter, drop: list[int]) -> None:
    """Delete layers ``drop`` in place and renumber what is left, as if built with fewer layers.

    Every ``layer_idx`` (the KV-cache slot) is renumbered, and per-layer config lists
    (``layer_types``) are cut to the kept layers."""
    layers = adapter.layers(model)
    kept = [i for i in range(len(layers)) if i not in set(drop)]
    setattr(adapter.base(model), adapter.layers_attr, nn.ModuleList([layers[i] for i in kept]))
    for new, layer in enumerate(adapter.layers(model)):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new
    config = model.config
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == len(layers):
        config.layer_types = [config.layer_types[i] for i in kept]
    config.num_hidden_layers = len(kept)


@register
class ShortGPT(Method):
    name = "shortgpt"
    label = "ShortGPT (remove layers)"
    summary = (
        "Deletes whole layers: the ones whose output is most similar to their input on calibration text "
        "(lowest 'block influence'), so the model loses the layers that change its hidden state least. The ratio "
        "is the fraction of layers removed. Fast and simple, and the result is an ordinary, shorter model."
    )
    uses_plan = False

    @torch.no_grad()
    def compress(self, model: nn.Module, adapter: Adapter, calibration: Calibration, plan: Plan, params: dict,
                 progress: Reporter) -> MethodOutput:
        num_layers = len(adapter.layers(model))
        n_drop = round(plan.target * num_layers)
        if n_drop >= num_layers:
            raise ConfigError(f"Ratio {plan.target} would remove all {num_layers} layers; use a smaller ratio.")
        t = time.perf_counter()
        if plan.schedule == "block-influence" and plan.scores is not None:
            bi = list(plan.scores)  # the plan already scored these layers on the same model
        else:
            bi = block_influence(model, adapter, calibration.tokens, calibration.batch_size, progress)
        stages = {"block influence": time.perf_counter() - t}
        drop = sorted(sorted(range(num_layers), key=lambda i: bi[i])[:n_drop])
        remove_layers(model, adapter, drop)
        return MethodOutput(
            widths={"layer_kept": [int(i not in drop) for i in range(num_layers)]},
            structure={"removed": drop, "original_layers": num_layers, "transformers_checkpoint": True},
            stage_seconds=stages,
            plots={"block_influence": bi},
        )

    def rebuild(self, model: nn.Module, adapter: Adapter, structure: dict) -> None:
        """Nothing to do: the saved config already has the reduced layer count."""
