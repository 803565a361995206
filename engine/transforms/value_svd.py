"""Whitened SVD of value/output per KV group (MoDeGPT's V/O step), lossless at full rank.

A KV group's value head ``v = W_g x̃`` (``x̃ = [x, 1]`` when it has a bias) is read by the output
blocks ``O_h`` of its query heads, so the group's contribution is ``Σ_h O_h·mix_h(v)``. A rank
``r`` replaces ``v`` by ``Q·P·v``: ``P`` (r × head_dim) becomes the new value projection
``P·W_g`` and ``Q`` (head_dim × r) folds into each ``O_h·Q``. Ignoring the attention mixing (as
the paper does), the error on calibration inputs is ``Σ_h ‖X̃ W_gᵀ (I − QP)ᵀ O_hᵀ‖²``; with
``G = W_g C W_gᵀ`` (``C`` the damped input Gram) it is ``tr((I − Π) G^½ K G^½)``,
``K = Σ_h O_hᵀ O_h``, ``Π`` a rank-r projection: minimal for ``Π = F_r F_rᵀ``, the top-r
eigenvectors of ``G^½ K G^½`` (the whitened SVD of ``C^½ W_gᵀ O_gᵀ``, done in the small
head-dim space), with ``P = F_rᵀ G^-½`` and ``Q = G^½ F_r``. At ``r = head_dim``, ``QP = I``.

The new value rows of group ``g`` take places ``g·head_dim + 0..r-1`` (``value_heads.narrow_values``
then runs them inside any HF attention).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .prune import set_columns
from .query_key import augmented


def _sym_power(g: torch.Tensor, power: float) -> torch.Tensor:
    """``g^power`` of a symmetric positive (semi)definite matrix; tiny eigenvalues are floored."""
    s, v = torch.linalg.eigh(g)
    s = s.clamp_min(s.max().clamp_min(1e-300) * 1e-12)
    return (v * s.pow(power)) @ v.T


def group_basis(value_rows: torch.Tensor, out_blocks: list[torch.Tensor], gram: torch.Tensor,
                rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P [rank, head_dim], Q [head_dim, rank]) for one KV group: ``value_rows`` is ``[W_g, b_g]``
    (head_dim × inputs), ``out_blocks`` the ``O_h`` (out × head_dim) of the group's query heads."""
    g = value_rows @ gram @ value_rows.T
    k = sum(o.T @ o for o in out_blocks)
    root, inv_root = _sym_power(g, 0.5), _sym_power(g, -0.5)
    _e, f = torch.linalg.eigh(root @ k @ root)
    f = f[:, -rank:].flip(1)  # top-r eigenvectors, largest first
    return f.T @ inv_root, root @ f


GroupBasis = Callable[[int, torch.Tensor, list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def group_value_output(value: nn.Linear, out: nn.Linear, heads: tuple[int, int, int], ones: bool,
                       basis: GroupBasis, device: "torch.device | str" = "cpu",
                       ) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """(value weight [n_kv·r, in], value bias or None, output weight [out, n_heads·r]), float64, with each
    KV group's value head mapped by ``P`` and its query heads' output blocks by ``Q``, where
    ``basis(group, value_rows, out_blocks) -> (P [r, head_dim], Q [head_dim, r])``; ``value_rows`` is
    ``[W_g, b_g]`` with ``ones`` (a bias column), ``out_blocks`` the ``O_h`` of the group's query heads.
    Any such pair with ``QP = I`` leaves the layer's output unchanged."""
    n_heads, n_kv, head_dim = heads
    rep = n_heads // n_kv
    w = augmented(value, ones).to(device)
    o = out.weight.detach().double().to(device)
    new_v, new_o = [], []
    for grp in range(n_kv):
        rows = w[grp * head_dim:(grp + 1) * head_dim]
        blocks = [o[:, h * head_dim:(h + 1) * head_dim] for h in range(grp * rep, (grp + 1) * rep)]
        p, q = basis(grp, rows, blocks)
        new_v.append(p @ rows)
        new_o.extend(b @ q for b in blocks)
    v = torch.cat(new_v)
    bias = v[:, -1] if value.bias is not None else None
    return (v[:, :-1] if ones else v), bias, torch.cat(new_o, 1)


def whitened_value_output(value: nn.Linear, out: nn.Linear, gram: torch.Tensor, heads: tuple[int, int, int],
                          rank: int) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """(value weight [n_kv·rank, in], value bias or None, output weight [out, n_heads·rank]), float64,
    from the damped input Gram ``gram`` (with a trailing ones row/column when ``value`` has a bias)."""
    ones = gram.shape[0] == value.in_features + 1
    return group_value_output(value, out, heads, ones,
                              lambda _g, rows, blocks: group_basis(rows, blocks, gram, rank), gram.device)


def value_places(rank: int, heads: tuple[int, int, int], device: "torch.device | str" = "cpu") -> torch.Tensor:
    """Where the rank-r value rows of each group sit in the full value width: ``g·head_dim + 0..r-1``."""
    _n_heads, n_kv, head_dim = heads
    return (torch.arange(n_kv, device=device)[:, None] * head_dim + torch.arange(rank, device=device)).reshape(-1)


@torch.no_grad()
def set_value_output(value: nn.Linear, out: nn.Linear, weights: tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]) -> None:
    """Install new value rows (and bias) and output columns, in each linear's own dtype."""
    v, b, o = weights
    dtype, device = value.weight.dtype, value.weight.device
    value.weight = nn.Parameter(v.to(device, dtype), requires_grad=value.weight.requires_grad)
    if b is not None:
        value.bias = nn.Parameter(b.to(device, dtype), requires_grad=value.bias.requires_grad)
    value.out_features = v.shape[0]
    set_columns(out, o)
