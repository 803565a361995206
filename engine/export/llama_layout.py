"""A loaded llama-family model, laid out block by block the way llama.cpp's ``llama``/``deci``
graphs read it.

What it does to get there, and why each step is exact:

- **Q/K rows** are reordered per head. transformers rotates the two *halves* of a head
  (``rotate_half``: dim ``j`` pairs with ``j + d/2``); llama.cpp's llama/deci RoPE rotates
  *neighbouring* dims (``2j`` with ``2j+1``). Row ``j`` of a head moves to ``2j`` and row
  ``j + d/2`` to ``2j+1`` in Q and K alike, so every q·k product is unchanged. The head count
  used is the layer's own (a converter that used a global count would scramble pruned layers).
- **Pruned value dims** (FASP, Wanda-SP) leave value heads narrower than query/key heads, which
  llama.cpp cannot say (one head width for Q, K and V). The kept V rows go back to their places
  among zero rows and O gets zero columns where V has zero rows: the attention output is
  identical, at the cost of the zeros on disk (``padded``).
- **SliceGPT's shared basis**: the residual stream is narrower (``d'`` instead of ``d``) and its
  weightless norms divide by the original ``d``. llama.cpp's RMSNorm divides by the width it
  sees, so each norm gets the weight ``sqrt(d/d')`` and the file the eps ``eps·d/d'``:
  ``x/sqrt(Σx²/d + eps) = sqrt(d/d')·x/sqrt(Σx²/d' + eps·d/d')``, exactly. The final norm's
  ``d'×d'`` mix before a tied head is folded into an untied output matrix ``E·mixᵀ``.
- **Removed blocks**: an empty attention becomes ``n_head = 0`` (deci skips it); an empty MLP
  becomes a width-1 MLP whose down column is zero, because deci's ``n_ff = 0`` skips the
  *whole* layer, attention included.

Anything else (a shortcut matrix, a side branch, a bias, residual widths that differ between
layers) is refused by name, never approximated.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..methods.slicegpt import MixedNorm
from ..models.adapters import Adapter
from ..models.loaded import LoadedModel
from ..models.shrunk_attention import ShrunkAttention
from ..transforms.fusion import RMSN, norm_eps
from ..transforms.value_heads import GatherLinear, ScatterLinear
from .base import NotExpressible

EXPORTABLE = ("ShortGPT", "FASP and Wanda-SP (any parts and any per-layer plan)", "SliceGPT and DOTResize variant=shared")
LAYER_WEIGHTS = {  # what a llama-family layer may hold, by state-dict name
    "input_layernorm.weight", "post_attention_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
}


def not_expressible(what: str) -> NotExpressible:
    return NotExpressible(f"llama.cpp cannot express {what}. Results that export to GGUF: {'; '.join(EXPORTABLE)}.")


@dataclass
class Block:
    """One decoder layer in llama.cpp's terms; ``tensors`` are [out, in] like torch's, keyed by
    llama.cpp's tensor role (``attn_q``, ``ffn_down``, ...)."""

    n_head: int
    n_kv: int
    n_ff: int
    tensors: dict[str, torch.Tensor]


@dataclass
class Layout:
    hidden: int  # the residual width the file's layers read and write
    head_dim: int
    eps: float  # llama.cpp has one RMSNorm eps for the whole model
    embedding: torch.Tensor
    final_norm: torch.Tensor
    head: "torch.Tensor | None"  # None: tied to the embedding
    blocks: list[Block]
    padded: int = 0  # zeros added for narrowed value heads (elements)
    stand_ins: list[int] = field(default_factory=list)  # layers whose removed MLP is a zero width-1 MLP
    folded_mix: bool = False  # SliceGPT shared: the final mix became an untied output matrix

    @property
    def uniform(self) -> bool:
        """Every layer has layer 0's shapes: the plain ``llama`` architecture can hold it."""
        return len({(b.n_head, b.n_kv, b.n_ff) for b in self.blocks}) <= 1 and all(b.n_head for b in self.blocks)


def rope_interleave(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head from transformers' half-split order to llama.cpp's neighbour order."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)


def scatter_rows(linear: nn.Linear) -> tuple[torch.Tensor, int]:
    """A value projection at its full width: narrowed rows back in place, zeros elsewhere."""
    w = linear.weight.detach()
    if not isinstance(linear, ScatterLinear):
        return w, 0
    full = w.new_zeros(linear.full, w.shape[1])
    full[linear.index] = w
    return full, full.numel() - w.numel()


def gather_columns(linear: nn.Linear, full: int) -> tuple[torch.Tensor, int]:
    """An output projection at its full input width: kept columns in place, zeros elsewhere."""
    w = linear.weight.detach()
    if not isinstance(linear, GatherLinear):
        return w, 0
    wide = w.new_zeros(w.shape[0], full)
    wide[:, linear.index] = w
    return wide, wide.numel() - w.numel()


def _check_layer(layer: nn.Module, index: int) -> None:
    extra = sorted(set(layer.state_dict()) - LAYER_WEIGHTS)
    if extra:
        raise not_expressible(f"layer {index}'s extra weights ({', '.join(extra[:4])})")


def layout(lm: LoadedModel) -> Layout:
    """The model block by block in llama.cpp's layout (refuses what llama.cpp cannot run)."""
    model, adapter = lm.model, lm.adapter
    config = model.config
    if adapter.name != "llama":
        raise not_expressible(f"the '{config.model_type}' architecture with this exporter")
    _n_heads, _n_kv, head_dim = adapter.heads(config)
    embedding = adapter.token_embedding(model).weight.detach()
    hidden = embedding.shape[1]
    final = adapter.final_norm(model)
    head = None if adapter.is_tied(model) else adapter.head(model).weight.detach()
    if isinstance(final, MixedNorm):  # n(x)·mix·Eᵀ = n(x)·(E·mixᵀ)ᵀ
        head = (adapter.head(model).weight.detach().double() @ final.mix.detach().double().T).to(embedding.dtype)
        final = final.norm
    final_weight, eps = _norm(final, hidden, "the final norm")
    out = Layout(hidden=hidden, head_dim=head_dim, eps=eps, embedding=embedding, final_norm=final_weight,
                 head=head, blocks=[], folded_mix=isinstance(adapter.final_norm(model), MixedNorm))
    for i, layer in enumerate(adapter.layers(model)):
        _check_layer(layer, i)
        query = adapter.parts_of(layer).query
        if isinstance(adapter.attention(layer), ShrunkAttention) or isinstance(query, ScatterLinear):
            raise not_expressible(f"layer {i}'s query/key heads narrower than the head dim (MoDeGPT)")
        out.blocks.append(_block(adapter, layer, i, head_dim, out))
    return out


def _norm(norm: nn.Module, width: int, what: str) -> tuple[torch.Tensor, float]:
    """(weight, eps) of an RMSNorm over ``width`` dims as llama.cpp computes it."""
    if isinstance(norm, RMSN):  # divides by the original width: fold the ratio into weight and eps
        ratio = norm.mean_dim / width
        return torch.full((width,), ratio ** 0.5), norm.eps * ratio
    weight = getattr(norm, "weight", None)
    if weight is None or getattr(norm, "bias", None) is not None or weight.shape[0] != width:
        raise not_expressible(f"{what} ({type(norm).__name__}) as an RMSNorm over the residual width {width}")
    return weight.detach(), norm_eps(norm)


def _norm_weight(norm: nn.Module, what: str, out: Layout) -> torch.Tensor:
    """A layer norm's weight; its eps must be the model's (llama.cpp has one)."""
    weight, eps = _norm(norm, out.hidden, what)
    if abs(eps - out.eps) > 1e-6 * out.eps:
        raise not_expressible(f"{what} with an eps ({eps:g}) other than the final norm's ({out.eps:g})")
    return weight


def _block(adapter: Adapter, layer: nn.Module, index: int, head_dim: int, out: Layout) -> Block:
    parts = adapter.parts_of(layer)
    widths = {lin.in_features for lin in parts.attn_in + parts.mlp_in} | {parts.attn_out.out_features,
                                                                          parts.down.out_features}
    if widths != {out.hidden}:
        raise not_expressible(f"layer {index}'s residual widths {sorted(widths)} beside the embedding's "
                              f"{out.hidden} (SliceGPT per-layer)")
    tensors: dict[str, torch.Tensor] = {}
    n_head = parts.query.out_features // head_dim
    n_kv = parts.key.out_features // head_dim
    if n_head:
        value, pad_v = scatter_rows(parts.value)
        output, pad_o = gather_columns(parts.attn_out, n_head * head_dim)
        out.padded += pad_v + pad_o
        tensors |= {"attn_norm": _norm_weight(parts.attn_norm, f"layer {index}'s attention norm", out),
                    "attn_q": rope_interleave(parts.query.weight.detach(), n_head),
                    "attn_k": rope_interleave(parts.key.weight.detach(), n_kv),
                    "attn_v": value, "attn_output": output}
    gate, up, down = (m.weight.detach() for m in (parts.gate, parts.up, parts.down))
    if gate.shape[0] == 0:  # deci's n_ff = 0 would skip the attention too
        gate, up, down = gate.new_zeros(1, out.hidden), up.new_zeros(1, out.hidden), down.new_zeros(out.hidden, 1)
        out.stand_ins.append(index)
    tensors |= {"ffn_norm": _norm_weight(parts.mlp_norm, f"layer {index}'s MLP norm", out),
                "ffn_gate": gate, "ffn_up": up, "ffn_down": down}
    return Block(n_head=n_head, n_kv=n_kv if n_head else 0, n_ff=gate.shape[0], tensors=tensors)
