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
        head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False


@torch.no_grad()
def _fold_into(linears: list[nn.Linear], scale: torch.Tensor, shift: torch.Tensor | None) -> None:
    """``W x' + b`` with ``x' = scale*x + shift``  ->  ``(W diag(scale)) x + (b + W shift)``."""
    for lin in linears:
        w = lin.weight.data.double()
        if shift is not None:
            extra = w @ shift.double()
            if lin.bias is None:
                lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
            lin.bias.data = (lin.bias.data.double() + extra).to(lin.bias.dtype)
        lin.weight.data = (w * scale.double()).to(lin.weight.dtype)


@torch.no_grad()
def _centre_writer(lin: nn.Linear) -> None:
    """Make a residual writer's outputs zero-mean across channels."""
    w = lin.weight.data.double()
    lin.weight.data = (w - w.mean(dim=0, keepdim=True)).to(lin.weight.dtype)
    if lin.bias is not None:
        b = lin.bias.data.double()
        lin.bias.data = (b - b.mean()).to(lin.bias.dtype)


@torch.no_grad()
def _centre_embedding(emb: nn.Embedding) -> None:
    w = emb.weight.data.double()
    emb.weight.data = (w - w.mean(dim=-1, keepdim=True)).to(emb.weight.dtype)


def _scale_shift(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    dim = weight.shape[0] if weight is not None else norm.normalized_shape[0]
    scale = weight.detach() if weight is not None else torch.ones(dim)
    return scale, (bias.detach() if bias is not None else None)


@torch.no_grad()
def fuse_norms(model: nn.Module, adapter: Adapter, fold_final: bool = True):
    """Fold every norm into its readers and replace it by a weightless RMSN.

    With ``fold_final`` the final norm folds into the head (untie it first, or the embedding
    changes too); otherwise its (scale, shift) is returned for the caller to place.
    """
    hidden = model.config.hidden_size
    if adapter.norm_kind == "layer":
        _centre_embedding(adapter.token_embedding(model))
        pos = adapter.position_embedding(model)
        if pos is not None:
            _centre_embedding(pos)
    for layer in adapter.layers(model):
        parts = adapter.parts_of(layer)
        for norm, readers in ((parts.attn_norm, parts.attn_in), (parts.mlp_norm, parts.mlp_in)):
            scale, shift = _scale_shift(norm)
            _fold_into(readers, scale, shift)
        if adapter.norm_kind == "layer":
            _centre_writer(parts.attn_out)
            _centre_writer(parts.mlp_out)
        adapter.set_layer_norms(layer, RMSN(hidden, norm_eps(parts.attn_norm)), RMSN(hidden, norm_eps(parts.mlp_norm)))
    final = adapter.final_norm(model)
    scale, shift = _scale_shift(final)
    adapter.set_final_norm(model, RMSN(hidden, norm_eps(final)))
    if not fold_final:
        return scale, shift
    _fold_into([adapter.head(model)], scale, shift)
    return None
