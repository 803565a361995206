"""Capture the inputs of the first decoder layer, then push them through layers one at a time.

Every layer-wise method (SliceGPT, FASP, the analysis) uses this instead of a full forward,
so each can modify layer i before computing layer i+1's inputs from the modified model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.adapters import Adapter


class _Captured(Exception):
    pass


@dataclass
class LayerInputs:
    """Hidden states per calibration batch, and the keyword arguments each layer receives."""

    hidden: list[torch.Tensor]  # one [batch, seq, width] tensor per batch
    kwargs: list[dict]  # position embeddings, masks ... exactly as the model passes them

    @property
    def num_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


@torch.inference_mode()
def capture_layer_inputs(model: nn.Module, adapter: Adapter, tokens: torch.Tensor, batch_size: int = 8) -> LayerInputs:
    """Run the model up to its first decoder layer for each batch of ``tokens``."""
    layer0 = adapter.layers(model)[0]
    device = next(model.parameters()).device
    hidden, kwargs = [], []

    def hook(_module, args, kw):
        hidden.append(args[0] if args else kw.pop("hidden_states"))
        kwargs.append({k: v for k, v in kw.items() if k not in ("past_key_values", "use_cache")})
        raise _Captured

    handle = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, tokens.shape[0], batch_size):
            try:
                model(input_ids=tokens[start : start + batch_size].to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return LayerInputs(hidden=hidden, kwargs=kwargs)


@torch.inference_mode()
def run_layer(layer: nn.Module, inputs: LayerInputs) -> list[torch.Tensor]:
    """The layer's outputs for every captured batch."""
    outs = []
    for h, kw in zip(inputs.hidden, inputs.kwargs):
        out = layer(h, **kw)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs
