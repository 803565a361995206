"""CR decomposition of query/key per head with RoPE frequency pairs kept together (MoDeGPT).

A head's attention logits are ``Σ_i q_i·k_i`` over its head dims: a sum of rank-one terms, one
per (query row, key row) pair. The CR (column-row) decomposition keeps the terms with the
largest ``‖C^½ w_q,i‖·‖C^½ w_k,i‖`` (``C`` the Gram of the attention input, so each factor is
the calibration energy of that query or key channel) and drops the rest. Under GQA a key head
is read by several query heads, so a dim's score is summed over the query heads of its KV
group and every head of a group keeps the same dims.

RoPE rotates dim ``i`` together with dim ``i + head_dim/2`` (transformers' ``rotate_half``
layout) by frequency ``i``: a kept term must keep both, so the unit of selection is the
frequency pair and its score the 2-D energies ``√(e_i + e_{i+d/2})``. The kept rows land back
at their places in a zero-filled full-width vector (``value_heads.ScatterLinear``), so RoPE
rotates each kept pair by its own frequency, dropped pairs are zero (a rotated zero stays zero)
and the softmax scale stays that of the original head dim. Without RoPE (OPT) a pair is one dim.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .prune import keep_rows, keep_top_per_group
from .value_heads import scatter_outputs

if TYPE_CHECKING:  # statistics are built on transforms: no runtime import back into stats
    from ..stats import InputStats


def input_gram(stats: "InputStats", ones: bool) -> torch.Tensor:
    """``X̃ᵀX̃`` (float64) with ``X̃ = [X, 1]`` when ``ones`` (projections with biases): the Gram, then
    the column sums and the token count as its last row/column. ``stats`` needs ``gram=True``
    (and ``sums=True`` for ``ones``)."""
    h = stats.gram.h
    if not ones:
        return h
    s = stats.sum.to(h.device)
    corner = torch.tensor([[float(stats.count)]], dtype=h.dtype, device=h.device)
    return torch.cat([torch.cat([h, s[:, None]], 1), torch.cat([s[None], corner], 1)], 0)


def damped_gram(gram: torch.Tensor, ridge: float, inputs: int) -> torch.Tensor:
    """``gram`` (float64, possibly with a trailing ones row/column for biases) plus
    ``ridge·mean diag`` on its first ``inputs`` diagonal entries (the ones column is not damped)."""
    out = gram.clone()
    idx = torch.arange(inputs, device=gram.device)
    out[idx, idx] += ridge * torch.diagonal(gram)[:inputs].mean()
    return out


def augmented(linear: nn.Linear, ones: bool) -> torch.Tensor:
    """``[W, b]`` in float64 (``W`` alone without ``ones``); a missing bias reads as zeros."""
    w = linear.weight.detach().double()
    if not ones:
        return w
    b = linear.bias.detach().double() if linear.bias is not None else w.new_zeros(w.shape[0])
    return torch.cat([w, b[:, None]], 1)


def channel_energy(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``‖C^½ wᵢ‖² = wᵢᵀ C wᵢ`` per output row ``wᵢ`` of ``weight`` (float64)."""
    w = weight.to(gram.device, torch.float64)
    return ((w @ gram) * w).sum(1)


def pair_scores(q_energy: torch.Tensor, k_energy: torch.Tensor, heads: tuple[int, int, int],
                rotary: bool) -> torch.Tensor:
    """[KV groups, pairs] scores ``Σ_{h∈g} ‖q_h,p‖·‖k_g,p‖`` over the pairs ``p`` of a head
    (frequency pairs ``(i, i+d/2)`` with RoPE, single dims without)."""
    n_heads, n_kv, head_dim = heads
    q, k = q_energy.view(n_heads, head_dim), k_energy.view(n_kv, head_dim)
    if rotary:
        half = head_dim // 2
        q, k = q[:, :half] + q[:, half:], k[:, :half] + k[:, half:]
    per_head = q.clamp_min(0).sqrt().view(n_kv, n_heads // n_kv, -1) * k.clamp_min(0).sqrt()[:, None]
    return per_head.sum(1)


def pair_dims(kept_pairs: torch.Tensor, head_dim: int, rotary: bool) -> torch.Tensor:
    """[groups, pairs kept] local pair indices -> [groups, dims kept] local head dims, ascending."""
    if not rotary:
        return kept_pairs
    return torch.cat([kept_pairs, kept_pairs + head_dim // 2], 1)


def query_key_rows(kept_pairs: torch.Tensor, heads: tuple[int, int, int],
                   rotary: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept rows of the query and key projections (flat, ascending) for ``kept_pairs``
    ([KV groups, pairs kept], local indices): every query head keeps its group's dims."""
    n_heads, n_kv, head_dim = heads
    dims = pair_dims(kept_pairs, head_dim, rotary)
    groups = torch.arange(n_kv, device=dims.device)
    k_rows = (groups[:, None] * head_dim + dims).reshape(-1)
    rep = n_heads // n_kv
    q_dims = dims.repeat_interleave(rep, 0)
    q_rows = (torch.arange(n_heads, device=dims.device)[:, None] * head_dim + q_dims).reshape(-1)
    return torch.sort(q_rows).values, torch.sort(k_rows).values


def select_pairs(query: nn.Linear, key: nn.Linear, gram: torch.Tensor, heads: tuple[int, int, int],
                 keep: int, rotary: bool) -> torch.Tensor:
    """The ``keep`` best pairs per KV group ([KV groups, keep], local indices, ascending) under the
    damped input Gram ``gram`` (with a ones row/column when q/k have biases)."""
    ones = gram.shape[0] == query.in_features + 1
    scores = pair_scores(channel_energy(augmented(query, ones), gram),
                         channel_energy(augmented(key, ones), gram), heads, rotary)
    n_kv = heads[1]
    return (keep_top_per_group(scores, keep).view(n_kv, keep) - torch.arange(n_kv, device=scores.device)[:, None]
            * scores.shape[1])


def narrow_query_key(query: nn.Linear, key: nn.Linear, kept_pairs: torch.Tensor, heads: tuple[int, int, int],
                     rotary: bool) -> None:
    """Keep only the rows of ``kept_pairs`` in the query and key projections, scattered back to
    their places so attention (RoPE, scale, cache) runs unchanged. Works on empty (meta) weights."""
    n_heads, n_kv, head_dim = heads
    q_rows, k_rows = query_key_rows(kept_pairs, heads, rotary)
    keep_rows(query, q_rows)
    keep_rows(key, k_rows)
    scatter_outputs(query, q_rows, n_heads * head_dim)  # indices stay on kept_pairs' device, as in narrow_values
    scatter_outputs(key, k_rows, n_kv * head_dim)
