"""RoPE attention whose query/key heads keep some frequency pairs and whose value heads are
narrower: the head dims really shrink (projections, attention products, KV cache).

MoDeGPT keeps, per KV group, a set of RoPE frequency pairs of the query/key heads, and gives
the value heads a rank ``r`` below the head dim. transformers' attention views q, k and v with
one ``head_dim`` and rotates with full-width ``cos``/``sin`` tables, so it cannot run that; this
forward (swapped onto the instance by a subclass of its own class, so state-dict names and
everything else stay) views q/k with ``qk_dim`` and v with ``v_dim``, and rotates each kept
dim by its own frequency: ``cos``/``sin`` are gathered at the head's kept dims, which keep the
``rotate_half`` layout (the kept pairs' first halves, then their partners). The softmax scale
stays the original head dim's (``module.scaling`` is untouched): the kept terms are the same
terms of the same dot product. Any attention backend that takes a value width other than the
query's (eager, sdpa) runs it; the cache stores the narrow keys and values.

For the Llama family (llama, mistral, qwen2); models with per-head q/k norms (Qwen3) and OPT
(no RoPE) use the scatter/gather linears of ``transforms.value_heads`` instead.
"""
from __future__ import annotations

import torch
from torch import nn

_CLASSES: dict[type, type] = {}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class ShrunkAttention(nn.Module):
    """Mixin placed before a transformers attention class (see ``shrink_attention``)."""

    qk_dim: int
    v_dim: int
    q_dims: torch.Tensor  # [query heads, qk_dim]: the original head dims each query head keeps
    k_dims: torch.Tensor  # [KV heads, qk_dim]

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, cache=None,
                past_key_values=None, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.llama.modeling_llama import eager_attention_forward

        cache = cache if cache is not None else past_key_values
        shape = hidden_states.shape[:-1]
        q = self.q_proj(hidden_states).view(*shape, -1, self.qk_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(*shape, -1, self.qk_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(*shape, -1, self.v_dim).transpose(1, 2)
        cos, sin = position_embeddings  # [batch, seq, head_dim]
        q, k = _rotate(q, cos, sin, self.q_dims), _rotate(k, cos, sin, self.k_dims)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        extra = {"sliding_window": self.sliding_window} if getattr(self, "sliding_window", None) is not None else {}
        out, weights = attend(self, q, k, v, attention_mask, dropout=0.0 if not self.training else self.attention_dropout,
                              scaling=self.scaling, **extra, **kwargs)
        return self.o_proj(out.reshape(*shape, -1).contiguous()), weights

    def extra_repr(self) -> str:
        return f"query/key head dim {self.qk_dim}, value head dim {self.v_dim}, softmax scale {self.scaling:.4g}"


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """RoPE on [batch, heads, seq, kept] with each head's kept dims' own angles."""
    c = cos[:, :, dims].permute(0, 2, 1, 3).to(x.dtype)  # [batch, heads, seq, kept]
    s = sin[:, :, dims].permute(0, 2, 1, 3).to(x.dtype)
    return x * c + _rotate_half(x) * s


def shrink_attention(attn: nn.Module, q_dims: torch.Tensor, k_dims: torch.Tensor, v_dim: int) -> None:
    """Run ``attn`` (whose q/k/v/o weights already have the narrow shapes) with query/key heads
    of the kept dims ``q_dims``/``k_dims`` ([heads, qk_dim], ascending per head, pairs whole) and
    value heads of width ``v_dim``. The indices stay on their given device (weights may be meta)."""
    cls = type(attn)
    if not isinstance(attn, ShrunkAttention):
        if cls not in _CLASSES:
            _CLASSES[cls] = type(f"Shrunk{cls.__name__}", (ShrunkAttention, cls), {})
        attn.__class__ = _CLASSES[cls]
    attn.qk_dim, attn.v_dim = q_dims.shape[1], v_dim
    attn.register_buffer("q_dims", q_dims, persistent=False)
    attn.register_buffer("k_dims", k_dims, persistent=False)
