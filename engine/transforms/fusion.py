"""Computational invariance (SliceGPT §3): fold norm scales into the linears that read them.

After fusion every norm is a weightless RMSNorm, so rotating the residual stream by an
orthogonal Q changes no output. LayerNorm models are also centred: embeddings and every
residual writer produce zero-mean vectors, which turns LayerNorm into RMSNorm exactly.
RMSNorm models are *not* centred (it would change their output).
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.adapters import Adapter
from .replace import assign


class RMSN(nn.Module):
    """Weightless RMSNorm that divides by the *original* width, so a sliced residual stream is
    normalised by (an estimate of) the full vector's norm, as in SliceGPT."""

    def __init__(self, mean_dim: int, eps: float):
        super().__init__()
        self.mean_dim = mean_dim
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        variance = x.pow(2).sum(-1, keepdim=True) / self.mean_dim
        return (x * torch.rsqrt(variance + self.eps)).to(dtype)

    def extra_repr(self) -> str:
        return f"mean_dim={self.mean_dim}, eps={self.eps}"


def norm_eps(norm: nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def untie_head(model: nn.Module, adapter: Adapter) -> None:
    """Give the head its own weight so rotating it leaves the embedding alone."""
    if adapter.is_tied(model):
        head = adapter.head(model)
        assign(head, "weight", head.weight.detach().clone())
    adapter.set_tied(model.config, False)


@torch.no_grad()
def _fold_into(linears: list[nn.Linear], scale: torch.Tensor, shift: torch.Tensor | None) -> None:
    """``W x' + b`` with ``x' = scale*x + shift``  ->  ``(W diag(scale)) x + (b + W shift)``."""
    for lin in linears:
        w = lin.weight.detach().double()
        if shift is not None:
            bias = lin.bias.detach().double() if lin.bias is not None else torch.zeros(lin.out_features, dtype=w.dtype,
                                                                                         device=w.device)
            assign(lin, "bias", (bias + w @ shift.double()).to(lin.weight.dtype))
        assign(lin, "weight", w * scale.double().to(w.device))


@torch.no_grad()
def _centre_writer(lin: nn.Linear) -> None:
    """Make a residual writer's outputs zero-mean across channels."""
    w = lin.weight.detach().double()
    assign(lin, "weight", w - w.mean(dim=0, keepdim=True))
    if lin.bias is not None:
        b = lin.bias.detach().double()
        assign(lin, "bias", b - b.mean())


@torch.no_grad()
def _centre_embedding(emb: nn.Embedding) -> None:
    w = emb.weight.detach().double()
    assign(emb, "weight", w - w.mean(dim=-1, keepdim=True))


def _scale_shift(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    dim = weight.shape[0] if weight is not None else norm.normalized_shape[0]
    scale = weight.detach() if weight is not None else torch.ones(dim)
    return scale, (bias.detach() if bias is not None else None)


@torch.no_grad()
def fuse_layer(layer: nn.Module, adapter: Adapter, hidden: int) -> None:
    """Fold one layer's norms into their readers (and centre its writers for LayerNorm models)."""
    parts = adapter.parts_of(layer)
    for norm, readers in ((parts.attn_norm, parts.attn_in), (parts.mlp_norm, parts.mlp_in)):
        scale, shift = _scale_shift(norm)
        _fold_into(readers, scale, shift)
    if adapter.norm_kind == "layer":
        _centre_writer(parts.attn_out)
        _centre_writer(parts.mlp_out)
    adapter.set_layer_norms(layer, RMSN(hidden, norm_eps(parts.attn_norm)), RMSN(hidden, norm_eps(parts.mlp_norm)))


@torch.no_grad()
def fuse_outside(model: nn.Module, adapter: Adapter, fold_final: bool = True):
    """The parts outside the layers: centre the embeddings (LayerNorm models) and replace the
    final norm by a weightless RMSN. With ``fold_final`` its scale (and shift) fold into the
    head (untie it first, or the embedding changes too); otherwise they are returned for the
    caller to place. Layers are fused one by one with ``fuse_layer`` as a pass reaches them."""
    hidden = adapter.hidden_size(model.config)
    if adapter.norm_kind == "layer":
        for emb in (adapter.token_embedding(model), adapter.position_embedding(model)):
            if emb is not None:
                _centre_embedding(emb)
    final = adapter.final_norm(model)
    scale, shift = _scale_shift(final)
    adapter.set_final_norm(model, RMSN(hidden, norm_eps(final)))
    if not fold_final:
        return scale, shift
    _fold_into([adapter.head(model)], scale, shift)
    return None
