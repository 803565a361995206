"""Decoder layers whose residual stream changes basis between blocks (SliceGPT's shortcuts).

``x_mid = x·S_attn + attn(norm(x))`` and ``out = x_mid·S_mlp + mlp(norm(x_mid))``. The layer
keeps its class's submodules and state-dict names; only ``forward`` changes, by swapping
the instance's class for a subclass that mixes this one in.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.adapters import ADAPTERS

_CLASSES: dict[type, type] = {}


class ShortcutForward:
    """Mixin: a forward pass built from the adapter's attention/MLP halves plus shortcuts."""

    slimlab_adapter: str
    attn_shortcut_Q: nn.Parameter
    mlp_shortcut_Q: nn.Parameter

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter = next(a for a in ADAPTERS if a.name == self.slimlab_adapter)
        attn_norm, mlp_norm = (getattr(self, n) for n in adapter.norm_names)
        attn = adapter.run_attention(self, attn_norm(hidden_states), kwargs)
        hidden_states = hidden_states @ self.attn_shortcut_Q + attn
        mlp = adapter.run_mlp(self, mlp_norm(hidden_states))
        return hidden_states @ self.mlp_shortcut_Q + mlp


def _shortcut_class(cls: type) -> type:
    if issubclass(cls, ShortcutForward):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Shortcut{cls.__name__}", (ShortcutForward, cls), {})
    return _CLASSES[cls]


def add_shortcuts(layer: nn.Module, adapter_name: str, attn_q: torch.Tensor, mlp_q: torch.Tensor) -> None:
    """Turn ``layer`` into a shortcut layer in place (shapes: [d_in, d_mid] and [d_mid, d_out])."""
    layer.__class__ = _shortcut_class(type(layer))
    layer.slimlab_adapter = adapter_name
    layer.attn_shortcut_Q = nn.Parameter(attn_q, requires_grad=False)
    layer.mlp_shortcut_Q = nn.Parameter(mlp_q, requires_grad=False)
