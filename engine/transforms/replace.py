"""Writing new weights without touching old ones.

The compressed model shares its outside parts (embeddings, final norm, head) with the
untouched original until a method changes them; so every change gives the module a new
``Parameter`` and never writes into the old tensor (``.data =``, in-place ops)."""
from __future__ import annotations

import torch
from torch import nn


def assign(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """``module.name = value`` as a fresh Parameter in the old one's dtype and grad setting."""
    old = getattr(module, name, None)
    dtype = old.dtype if old is not None else value.dtype
    grad = old.requires_grad if old is not None else False
    setattr(module, name, nn.Parameter(value.to(dtype), requires_grad=grad))
