"""Attention whose value heads are narrower than its query/key heads, in any HF attention.

Pruning value rows (and the matching output-projection columns) makes a value head narrower
than its query/key head, which HF attention modules cannot express: they view q, k and v
with one ``head_dim``. Rather than rewrite each architecture's attention, the narrowed value
projection writes its outputs back to their places in a zero-filled full-width vector, and
the output projection reads only the kept places. Attention sees the original shapes and
the zeros contribute nothing, so every architecture and attention backend (eager, sdpa,
KV cache) works unchanged. The two linears really shrink (parameters and their FLOPs);
the attention-score product and the value cache keep the full head width.

Both classes are ``nn.Linear`` subclasses swapped onto the existing instances, so state-dict
names stay those of the base model; their indices are non-persistent buffers that
``rebuild`` recreates from the saved structure.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ScatterLinear(nn.Linear):
    """Outputs land at ``index`` in a zero vector of width ``full``."""

    index: torch.Tensor
    full: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        out = y.new_zeros(*y.shape[:-1], self.full)
        out[..., self.index] = y
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scattered_to={self.full}"


class GatherLinear(nn.Linear):
    """Reads only the inputs at ``index`` of a wider vector."""

    index: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(select_last(x, self.index), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gathered_from={self.index.numel()} places"


def select_last(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[..., index]`` through a 2-D view: ``index_select`` on the last dim of a 3-D
    tensor is several times slower on a CPU than on the matching 2-D view."""
    return x.reshape(-1, x.shape[-1]).index_select(1, index).view(*x.shape[:-1], index.numel())


def output_columns(kept_values: torch.Tensor, heads: tuple[int, int, int]) -> torch.Tensor:
    """The output-projection columns fed by the kept value rows.

    A value row ``j`` of KV group ``g`` is read by every query head of that group (heads
    ``g·rep … g·rep+rep-1`` under GQA), i.e. by columns ``h·head_dim + j`` for each of them."""
    n_heads, n_kv, head_dim = heads
    rep = n_heads // n_kv
    group, dim = kept_values // head_dim, kept_values % head_dim
    offsets = torch.arange(rep, device=kept_values.device)
    cols = ((group[:, None] * rep + offsets[None]) * head_dim + dim[:, None]).reshape(-1)
    return torch.sort(cols).values


def narrow_values(value: nn.Linear, out: nn.Linear, kept_values: torch.Tensor, heads: tuple[int, int, int]) -> None:
    """Turn an already pruned value/output pair (rows ``kept_values`` of the value projection,
    the matching output columns) into scatter/gather linears that run inside HF attention.

    The indices stay on ``kept_values``'s device (weights may still be empty meta tensors)."""
    _n_heads, n_kv, head_dim = heads
    scatter_outputs(value, kept_values, n_kv * head_dim)
    gather_inputs(out, output_columns(kept_values, heads))


def scatter_outputs(linear: nn.Linear, index: torch.Tensor, full: int) -> None:
    """Turn an already row-pruned linear into a ``ScatterLinear`` whose outputs land at ``index``
    of a zero vector of width ``full`` (the places of its kept rows in the unpruned output)."""
    linear.__class__ = ScatterLinear
    linear.full = full
    linear.register_buffer("index", index, persistent=False)


def gather_inputs(linear: nn.Linear, index: torch.Tensor) -> None:
    """Turn an already column-pruned linear into a ``GatherLinear`` that reads the inputs at ``index``
    (the places of its kept columns in the unpruned input)."""
    linear.__class__ = GatherLinear
    linear.register_buffer("index", index, persistent=False)
