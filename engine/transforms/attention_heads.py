"""Give an attention its narrowed heads: kept query/key pairs and a value rank, as a runnable graph.

Two graphs run the same numbers (``narrow_heads`` picks by what the adapter says the layer allows):

- **shrunk** (``models.shrunk_attention``, Llama family): the heads really are narrower, so the
  attention products and the KV cache shrink with the projections;
- **scatter** (``value_heads``, ``query_key.narrow_query_key``; OPT, Qwen3): the kept rows are
  written back to their places in zero-filled full-width heads, and attention runs unchanged.

The q/k/v/o weights arrive already narrowed (value rows ``g·r … g·r+r-1`` per KV group, output
columns ``h·r … h·r+r-1`` per head); only the query/key rows are cut here.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..models.adapters import Adapter, LayerParts
from ..models.shrunk_attention import shrink_attention
from .prune import keep_rows, prune_pair
from .query_key import narrow_query_key, pair_dims, query_key_rows
from .value_heads import narrow_values
from .value_svd import value_places


def narrow_heads(adapter: Adapter, layer: torch.nn.Module, kept_pairs: Optional[torch.Tensor], rank: int,
                 heads: tuple[int, int, int], shrink: bool) -> None:
    """Cut the query/key rows outside ``kept_pairs`` ([KV groups, pairs], None: all kept) and run the
    layer's attention with value heads of width ``rank``, shrunk or scattered."""
    n_heads, n_kv, head_dim = heads
    parts = adapter.parts_of(layer)
    if not shrink:
        if kept_pairs is not None:
            narrow_query_key(parts.query, parts.key, kept_pairs, heads, adapter.rotary)
        if rank < head_dim:
            narrow_values(parts.value, parts.attn_out, value_places(rank, heads), heads)
        return
    if kept_pairs is None:
        dims = torch.arange(head_dim).repeat(n_kv, 1)
    else:
        dims = pair_dims(kept_pairs, head_dim, adapter.rotary)
        q_rows, k_rows = query_key_rows(kept_pairs, heads, adapter.rotary)
        keep_rows(parts.query, q_rows)
        keep_rows(parts.key, k_rows)
    shrink_attention(adapter.attention(layer), dims.repeat_interleave(n_heads // n_kv, 0), dims, rank)


def decomposed_shapes(parts: LayerParts, width: int, rank: int, heads: tuple[int, int, int]) -> None:
    """Give a fresh layer (``rebuild``) the MLP ``width`` and value ``rank`` a decomposition left it (the
    kept value rows first in each group, as the decompositions place them); its heads are narrowed after."""
    n_heads, n_kv, head_dim = heads
    if parts.mlp_out.in_features != width:
        keep = torch.arange(width)
        prune_pair(parts.mlp_in, parts.mlp_out, keep, keep)
    if rank < head_dim:
        prune_pair([parts.value], parts.attn_out, torch.arange(n_kv * rank), torch.arange(n_heads * rank))
