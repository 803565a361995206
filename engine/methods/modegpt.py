"""MoDeGPT (Lin et al., ICLR 2025): modular decomposition of every part of a layer, no gradients.

Each layer loses its plan ratio in all three of its modules, each by the decomposition that
fits how the module is built (METHODS.md, MoDeGPT):

- **MLP** (Nyström): keep the gated channels with the largest ridge leverage
  ``diag(C(C+λI)⁻¹)`` of their Gram ``C`` and refit ``down_proj`` by damped least squares;
- **Q/K** (CR decomposition): keep the RoPE frequency pairs with the largest
  ``‖C^½ w_q‖·‖C^½ w_k‖``, summed over a KV group's query heads (``transforms.query_key``);
- **V/O** (whitened SVD per KV group): the value head becomes rank r, the output projection
  reads r dims per head (``transforms.value_svd``).

Layers run in order through the driver, each compressed on the output of the compressed ones
before it. The paper's global allocation (softmax of negated block influence, capped at 0.8)
is the ``block-influence`` schedule: ``--schedule block-influence --schedule-param max_ratio=0.8``.
On the Llama family the heads really shrink (``models.shrunk_attention``: projections, attention
products and KV cache); on OPT and Qwen3 the kept rows are scattered back into full-width heads
(``transforms.attention_heads``). Q/K are left whole on models with per-head q/k norms (Qwen3: an RMSNorm over the head dim
would rescale the kept dims) and when ``parts`` excludes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..calibration import CalibrationSpec
from ..models.adapters import Adapter, normalize
from ..params import DAMPINGS, DEFAULT_DAMPING, Param
from ..progress import Reporter
from ..stats import HalfOutcome, HalfStep, InputStats, LayerHooks
from ..transforms.importance import ridge_leverage
from ..transforms.prune import keep_top, prune_pair, restore_columns
from ..transforms.attention_heads import decomposed_shapes, narrow_heads
from ..transforms.query_key import damped_gram, input_gram, select_pairs
from ..transforms.value_svd import set_value_output, whitened_value_output
from ..transforms.widths import kept_mlp_width, kept_value_dims
from .base import Method, MethodOutput, Plan, Structure, register, timed_pass

PARTS = ("qk", "vo", "mlp")


@dataclass
class ModeGPTStructure(Structure):
    mlp: list[int]  # MLP width per layer
    value_rank: list[int]  # value dims per KV group per layer (head_dim when untouched)
    qk_pairs: list  # per layer: [KV groups][kept pair indices], or None when Q/K are whole
    heads: list[int]  # (query heads, KV heads, head dim) of the base model
    rotary: bool = True  # pairs are RoPE frequency pairs (else single dims)
    shrunk: bool = False  # heads really narrower (models.shrunk_attention), else scattered to full width


def kept_pairs_count(head_dim: int, ratio: float, rotary: bool) -> int:
    """Pairs (or dims, without RoPE) a head keeps at ``ratio``: at least one."""
    return kept_value_dims(head_dim // 2 if rotary else head_dim, ratio)


class ModeGPTPass(LayerHooks):
    """Attention half: Q/K by CR and V/O by whitened SVD from one Gram of the attention input,
    then the half's output recomputed; MLP half: Nyström selection and least-squares refit."""

    exact = False

    def __init__(self, adapter: Adapter, heads: tuple[int, int, int], plan: Plan, params: dict, qk_ok: bool,
                 shrink: bool):
        self.adapter, self.heads, self.plan, self.params = adapter, heads, plan, params
        self.parts = set(params["parts"].split("+"))
        self.qk_ok = qk_ok and "qk" in self.parts
        self.rotary = adapter.rotary
        self.shrink = shrink
        self.mlp: list[int] = []
        self.value_rank: list[int] = []
        self.qk_pairs: list[Optional[list[list[int]]]] = []

    def half(self, step: HalfStep) -> Optional[HalfOutcome]:
        ratio = self.plan.ratios[step.index]
        if step.half == "attention":
            return self._attention(step, ratio)
        width = step.writer.in_features
        k = kept_mlp_width(width, ratio, self.params["round_to"]) if "mlp" in self.parts else width
        kept = None
        if k < width:
            stats = step.stats(gram=True, sums=step.writer.bias is not None)
            kept = keep_top(ridge_leverage(step.writer.weight, stats, self.params["ridge_mlp"]), k)
            damp = None if self.params["damping"] == "gcv" else self.params["ridge_mlp"]
            refit = restore_columns(step.writer.weight, step.writer.bias, step.release_stats(), kept, damp)
            prune_pair(step.parts.mlp_in, step.writer, kept, kept, refit)
        self.mlp.append(step.writer.in_features)
        return HalfOutcome(columns=kept)

    def _attention(self, step: HalfStep, ratio: float) -> HalfOutcome:
        n_heads, n_kv, head_dim = self.heads
        parts = step.parts
        pairs = kept_pairs_count(head_dim, ratio, self.rotary) if self.qk_ok else None
        full_pairs = head_dim // 2 if self.rotary else head_dim
        rank = kept_value_dims(head_dim, ratio) if "vo" in self.parts else head_dim
        do_qk, do_vo = pairs is not None and pairs < full_pairs, rank < head_dim
        self.value_rank.append(rank)
        if not (do_qk or do_vo):
            self.qk_pairs.append(None)
            return HalfOutcome()
        normed = [normalize(parts.attn_norm, r) for r in step.residual]
        ones = any(lin.bias is not None for lin in parts.attn_in)
        stats = InputStats.of(normed, gram=True, sums=ones)
        gram = input_gram(stats, ones)
        del stats
        kept = None
        if do_qk:
            kept = select_pairs(parts.query, parts.key, damped_gram(gram, self.params["ridge_qk"], parts.query.in_features),
                                self.heads, pairs, self.rotary)
        self.qk_pairs.append(kept.tolist() if kept is not None else None)
        if do_vo:
            weights = whitened_value_output(parts.value, parts.attn_out,
                                            damped_gram(gram, self.params["ridge_vo"], parts.value.in_features),
                                            self.heads, rank)
            set_value_output(parts.value, parts.attn_out, weights)
        del gram
        narrow_heads(self.adapter, step.layer, kept, rank, self.heads, self.shrink)
        # the half's output from the compressed attention (the driver's ``inner`` is the original's)
        written = [self.adapter.run_attention(step.layer, n, kw) for n, kw in zip(normed, step.kwargs)]
        return HalfOutcome(residual=step.add(step.residual, written))


@register
class ModeGPT(Method):
    name = "modegpt"
    label = "MoDeGPT (modular decomposition)"
    paper = "https://arxiv.org/abs/2408.09632"
    removes = ("attention_qk", "attention_vo", "mlp")
    summary = (
        "Shrinks all three parts of every layer, each the way it is built, with no training. MLP: keeps the "
        "channels that carry the most independent information (ridge leverage, a Nyström approximation) and "
        "re-solves the down projection. Query/key: keeps the rotary frequency pairs whose query and key "
        "energies multiply to the most (a CR decomposition), so position encoding still works. Value/output: "
        "replaces each value head by its best low-rank version under the calibration data (a whitened SVD). "
        "Combine it with the block-influence schedule for the paper's per-layer allocation."
    )
    params = (
        Param("parts", "choice", "qk+vo+mlp", "which modules lose the plan's ratio",
              choices=("qk+vo+mlp", "vo+mlp", "qk+mlp", "qk+vo", "mlp", "vo", "qk")),
        Param("ridge_mlp", "float", 1e-2, "Nyström ridge (fraction of the mean diagonal): leverage and the "
              "down-projection refit", minimum=0.0, maximum=10.0),
        Param("ridge_qk", "float", 1e-6, "ridge on the attention-input Gram for the Q/K scores", minimum=0.0,
              maximum=10.0),
        Param("ridge_vo", "float", 1e-4, "ridge on the attention-input Gram for the V/O whitening", minimum=0.0,
              maximum=10.0),
        Param("damping", "choice", DEFAULT_DAMPING, "down-projection refit damping: chosen per layer by "
              "generalized cross-validation (gcv), or ridge_mlp (fixed)", choices=DAMPINGS),
        Param("round_to", "int", 8, "round MLP widths to a multiple of this", minimum=1, maximum=256),
    )
    structure_type = ModeGPTStructure

    @torch.no_grad()
    def compress(self, work, calibration: CalibrationSpec, plan: Plan, params: dict, progress: Reporter) -> MethodOutput:
        adapter = work.adapter
        heads = adapter.heads(work.model.config)
        first = adapter.layers(work.lm.model)[0]
        shrink = adapter.shrinks_heads(first)
        hooks = ModeGPTPass(adapter, heads, plan, params, not adapter.has_qk_norm(first), shrink)
        stages = timed_pass(work, calibration, hooks, progress, self.name, "decompose")
        _n, _kv, head_dim = heads
        full_pairs = head_dim // 2 if adapter.rotary else head_dim
        kept_pairs = [full_pairs if p is None else len(p[0]) for p in hooks.qk_pairs]
        return MethodOutput(
            widths={"mlp": hooks.mlp, "value": hooks.value_rank, "qk_pairs": kept_pairs},
            structure=ModeGPTStructure(hooks.mlp, hooks.value_rank, hooks.qk_pairs, list(heads), adapter.rotary, shrink),
            stage_seconds=stages,
            plots={"kept RoPE pairs" if adapter.rotary else "kept Q/K dims": kept_pairs, "value rank": hooks.value_rank},
        )

    @torch.no_grad()
    def rebuild(self, model: nn.Module, adapter: Adapter, structure: ModeGPTStructure) -> None:
        heads = tuple(structure.heads)
        head_dim = heads[2]
        for layer, width, rank, pairs in zip(adapter.layers(model), structure.mlp, structure.value_rank,
                                             structure.qk_pairs):
            parts = adapter.parts_of(layer)
            decomposed_shapes(parts, width, rank, heads)
            if pairs is not None or rank < head_dim:
                kept = torch.tensor(pairs, dtype=torch.long) if pairs is not None else None
                narrow_heads(adapter, layer, kept, rank, heads, structure.shrunk)
