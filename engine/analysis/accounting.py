"""Honest parameter and FLOP accounting, for dense and compressed models alike.

Parameters are counted once per tensor (a tied head is not counted twice). "Non-embedding"
excludes token and position embeddings and the head, so it measures the transformer body
that structured methods actually shrink.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..models.adapters import Adapter


@dataclass
class Accounting:
    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    dtype: str
    device: str
    params_total: int
    params_non_embedding: int
    params_embedding: int
    params_head: int  # 0 when tied
    params_added: int  # extra matrices a method introduced (shortcuts, untied head, side branches)
    flops_per_token: int  # 2 x multiply-accumulates of every linear incl. the head; attention scores excluded
    bytes_on_disk: Optional[int]
    added_detail: dict = field(default_factory=dict)
    # integer buffers in the layers (which channels a block reads or writes: DISP-LLM, narrowed value heads):
    # stored and loaded beside the parameters, not counted among them
    index_entries: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _unique_params(module: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def index_entries(layers: nn.Module) -> int:
    """Entries of the layers' integer buffers, each tensor once (a half's readers share one index)."""
    unique = {id(b): b for b in layers.buffers()
              if not (b.is_floating_point() or b.is_complex() or b.dtype == torch.bool)}
    return sum(b.numel() for b in unique.values())


def linear_flops(model: nn.Module) -> int:
    return 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def bytes_on_disk(path: "str | os.PathLike | None") -> Optional[int]:
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        files = [f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".gguf", ".pt", ".bitsback")]
        return sum(f.stat().st_size for f in files) or None
    return None


def account(
    model: nn.Module,
    adapter: Adapter,
    path: "str | os.PathLike | None" = None,
    added: Optional[dict] = None,
) -> Accounting:
    """Account a model; ``added`` maps a label to the parameter count a method introduced."""
    cfg = model.config
    n_heads, n_kv, head_dim = adapter.heads(cfg)
    emb = adapter.token_embedding(model)
    pos = adapter.position_embedding(model)
    head = adapter.head(model)
    tied = adapter.is_tied(model)
    params_embedding = emb.weight.numel() + (pos.weight.numel() if pos is not None else 0)
    params_head = 0 if tied else head.weight.numel() + (head.bias.numel() if head.bias is not None else 0)
    total = _unique_params(model)
    layers = adapter.layers(model)
    parts = adapter.parts_of(layers[0])
    param = next(model.parameters())
    added = dict(added or {})
    return Accounting(
        architecture=adapter.model_type(cfg),
        num_layers=len(layers),
        hidden_size=adapter.hidden_size(cfg),
        num_heads=n_heads,
        num_kv_heads=n_kv,
        head_dim=head_dim,
        intermediate_size=parts.mlp_out.in_features,
        vocab_size=emb.weight.shape[0],
        tied_embeddings=tied,
        dtype=str(param.dtype).replace("torch.", ""),
        device=str(param.device),
        params_total=total,
        params_non_embedding=total - params_embedding - params_head,
        params_embedding=params_embedding,
        params_head=params_head,
        params_added=sum(added.values()),
        flops_per_token=linear_flops(model),
        bytes_on_disk=bytes_on_disk(path),
        added_detail=added,
        index_entries=index_entries(layers),
    )
