"""Olica (ICML 2025): orthogonal decomposition of attention and linear calibration, no retraining.

Each layer loses its plan ratio ``s`` across three modules (METHODS.md, Olica):

- **Q/K** lose ``s_qk = qk_factor·s`` of their weights: each projection becomes two small linears
  by an input-weighted SVD (``transforms.low_rank``); RoPE, q/k norms and the softmax scale run on
  the full-width output as before;
- **V/O** lose ``s_vo = vo_factor·s``: each KV group's value head is re-based by the fast OND and its
  weakest dims, by Wanda-style scores, dropped (``transforms.orthogonal_heads``). GQA stays native:
  every query head of a group keeps its group's dims; K/V are never repeated;
- the **MLP** takes the rest of the layer's budget, its neurons kept by Wanda-style scores of the
  readers' rows and the writer's column (``importance.pair_channel_scores``), with no refit.

Then **linear calibration**: on the ``calibrated_layers`` layers whose MLP output a linear map of
its input predicts best (a read-only pass over the original first), the pruned MLP's error on the
calibration data is ridge-regressed on its input and kept as a rank-r side branch ``y += B·A·x + b``
(``transforms.compensation``: the reduced-rank ridge fit, the reference's ridge solution truncated in
the input-whitened metric; ``models.side_branches``). Every factor and branch counts as parameters.

Defaults from the public code: ``qk_factor`` 2 and ``vo_factor`` 2/(1+k) with k = 3, calibration on
6 layers at rank 0.03·hidden, ridge 0.5 of the mean eigenvalue. Departures: no expansion of K/V to
full heads under GQA (the reference's KV cache grows by the group size), and no "keep the 1% lowest
scored neurons" quirk of its MLP selection. Heads shrink on the Llama family as MoDeGPT's do
(``transforms.attention_heads``); the value cache then shrinks too, the key cache does not (keys
keep their width: only their projection is low-rank).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..calibration import CalibrationSpec
from ..models.adapters import Adapter, LayerParts, normalize
from ..params import Param
from ..progress import Reporter
from ..stats import HalfOutcome, HalfStep, InputStats, LayerHooks
from ..models.side_branches import rebuild_branches
from ..transforms.attention_heads import decomposed_shapes, narrow_heads
from ..transforms.compensation import BIAS, CompensatedPass, ErrorStats
from ..transforms.importance import pair_channel_scores
from ..transforms.low_rank import low_rank_shapes, make_low_rank, rank_for_ratio, saves_params, weighted_factors
from ..transforms.orthogonal_heads import orthogonal_value_output
from ..transforms.prune import keep_top, prune_pair
from ..transforms.value_svd import set_value_output
from ..transforms.widths import kept_mlp_width, kept_value_dims
from .base import Method, MethodOutput, Plan, Structure, register, timed_pass

MAX_RATIO = 0.95  # no module loses more than this; a layer whose MLP cannot take the rest loses less


@dataclass
class OlicaStructure(Structure):
    mlp: list[int]  # MLP width per layer
    value_rank: list[int]  # value dims per KV group per layer (head_dim when untouched)
    qk_rank: list  # per layer [query rank, key rank] (0: that projection dense)
    calibration_rank: list[int]  # rank of the MLP's side branch per layer (0: none)
    heads: list[int]  # (query heads, KV heads, head dim) of the base model
    shrunk: bool = False  # value heads really narrower (models.shrunk_attention), else scattered to full width


@dataclass(frozen=True)
class Split:
    """A layer's ratio shared out: the fraction each module loses."""

    qk: float
    vo: float
    mlp: float


def split_ratio(ratio: float, params: dict, sizes: tuple[int, int, int]) -> Split:
    """Q/K lose ``qk_factor·ratio``, V/O ``vo_factor·ratio`` (each capped), the MLP the rest of the
    layer's ``ratio·(qk + vo + mlp)`` parameters; ``sizes`` are the (q+k, v+o, MLP) parameter counts."""
    qk_size, vo_size, mlp_size = sizes
    qk = min(params["qk_factor"] * ratio, MAX_RATIO)
    vo = min(params["vo_factor"] * ratio, MAX_RATIO)
    rest = ratio * sum(sizes) - qk * qk_size - vo * vo_size
    return Split(qk, vo, min(max(rest / mlp_size, 0.0), MAX_RATIO))


def _weights(*linears: nn.Linear) -> int:
    return sum(lin.weight.numel() for lin in linears)


@dataclass(frozen=True)
class LayerShape:
    """What a layer keeps at its ratio: the same numbers whether planned (``plan_shapes``) or run."""

    value_rank: int  # value dims per KV group (head_dim: V/O untouched)
    qk_rank: list[int]  # [query, key] rank of their factors (0: that projection stays dense)
    mlp: int  # MLP width


def layer_shape(parts: LayerParts, head_dim: int, ratio: float, params: dict) -> LayerShape:
    """The ranks and widths of one (original) layer at ``ratio``: the split of ``split_ratio``, a
    factorisation only where it holds fewer weights than the projection."""
    sizes = (_weights(parts.query, parts.key), _weights(parts.value, parts.attn_out),
             _weights(*parts.mlp_in, parts.down))
    split = split_ratio(ratio, params, sizes)
    ranks = []
    for lin in (parts.query, parts.key):
        r = rank_for_ratio(lin.out_features, lin.in_features, split.qk) if split.qk > 0 else 0
        ranks.append(r if r and saves_params(lin.out_features, lin.in_features, r) else 0)
    return LayerShape(kept_value_dims(head_dim, split.vo) if split.vo > 0 else head_dim, ranks,
                      kept_mlp_width(parts.down.in_features, split.mlp, params["round_to"]))


def planned(adapter: Adapter, model: nn.Module, plan: Plan,
            params: dict) -> tuple[list[LayerShape], list[int], int]:
    """(each layer's shape at its plan ratio, each layer's MLP width, the side-branch rank) of an original model."""
    head_dim = adapter.heads(model.config)[2]
    layers = adapter.layers(model)
    shapes = [layer_shape(adapter.parts_of(layer), head_dim, ratio, params)
              for layer, ratio in zip(layers, plan.ratios)]
    widths = [adapter.parts_of(layer).down.in_features for layer in layers]
    return shapes, widths, round(params["calibration_rank"] * adapter.hidden_size(model.config))


def calibration_ranks(shapes: list[LayerShape], widths: list[int], unexplained: Optional[list[float]],
                      rank: int, count: int) -> list[int]:
    """The side-branch rank of each layer: ``rank`` on the ``count`` layers with a pruned MLP whose output
    is best predicted linearly (``unexplained`` lowest; without it, the first: same shapes), 0 elsewhere."""
    pruned = [i for i, (shape, width) in enumerate(zip(shapes, widths)) if shape.mlp < width]
    if unexplained is not None:
        pruned.sort(key=lambda i: unexplained[i])
    chosen = set(pruned[:count]) if rank else set()
    return [rank if i in chosen else 0 for i in range(len(shapes))]


class Predictability(LayerHooks):
    """Read-only pass over the original: the share of the variance of each MLP's output that a ridge-regressed
    affine map of its input leaves unexplained (lower: a linear side branch can stand in for more of it)."""

    exact = False
    needs_last_output = False

    def __init__(self, damp: float):
        self.damp = damp
        self.unexplained: list[float] = []

    def half(self, step: HalfStep) -> None:
        if step.half != "mlp":
            return None
        norm = step.parts.mlp_norm
        stats = None
        for h, inner in zip(step.residual, step.inner):
            x, y = normalize(norm, h), step.writer(inner)
            stats = stats or ErrorStats(x.shape[-1], y.shape[-1], y.device)
            stats.add(x, y)
        fit = stats.fit(x.shape[-1], self.damp)
        # as a share of the output's variance, not its energy: a constant output is no evidence that a
        # linear map predicts the MLP (the reference scores correlations, which ignore the mean too)
        n, energy = stats.gram.count, float(stats.energy)
        varying = energy - float(stats.sum_out @ stats.sum_out) / n
        self.unexplained.append(1.0 if fit is None or varying <= 0 else fit.remaining * energy / varying)
        return None


class OlicaPass(LayerHooks):
    """Attention half: V/O by OND + Wanda dims and Q/K by weighted SVD, the half's output recomputed;
    MLP half: Wanda neurons kept (the side branch, where planned, comes from the wrapping ``CompensatedPass``)."""

    exact = False

    def __init__(self, adapter: Adapter, heads: tuple[int, int, int], shapes: list[LayerShape], shrink: bool):
        self.adapter, self.heads, self.shapes, self.shrink = adapter, heads, shapes, shrink
        self.mlp: list[int] = []

    def half(self, step: HalfStep) -> Optional[HalfOutcome]:
        if step.half == "attention":
            return self._attention(step)
        return self._mlp(step)

    def _attention(self, step: HalfStep) -> HalfOutcome:
        parts = step.parts
        shape = self.shapes[step.index]
        rank, low, head_dim = shape.value_rank, shape.qk_rank, self.heads[2]
        if rank == head_dim and not any(low):
            return HalfOutcome()
        normed = [normalize(parts.attn_norm, r) for r in step.residual]
        in_norms = InputStats.of(normed).norms
        if rank < head_dim:
            inner_gram = step.stats(gram=True).gram.h
            weights, _kept = orthogonal_value_output(parts.value, parts.attn_out, self.heads, in_norms, inner_gram,
                                                     rank)
            set_value_output(parts.value, parts.attn_out, weights)
            step.release_stats()
        for lin, r in zip((parts.query, parts.key), low):
            if r:
                make_low_rank(lin, *weighted_factors(lin.weight, in_norms, r))
        if rank < head_dim:
            narrow_heads(self.adapter, step.layer, None, rank, self.heads, self.shrink)
        written = [self.adapter.run_attention(step.layer, n, kw) for n, kw in zip(normed, step.kwargs)]
        return HalfOutcome(residual=step.add(step.residual, written))

    def _mlp(self, step: HalfStep) -> HalfOutcome:
        width, k = step.writer.in_features, self.shapes[step.index].mlp
        kept = None
        if k < width:
            parts = step.parts
            in_norms = InputStats.of([normalize(parts.mlp_norm, r) for r in step.residual]).norms
            scores = pair_channel_scores([lin.weight for lin in parts.mlp_in], in_norms.to(step.writer.weight.device),
                                         [step.writer.weight], [step.stats().norms.to(step.writer.weight.device)])
            kept = keep_top(scores, k)
            prune_pair(parts.mlp_in, step.writer, kept, kept)
        self.mlp.append(step.writer.in_features)
        return HalfOutcome(columns=kept)


@register
class Olica(Method):
    name = "olica"
    label = "Olica (orthogonal decomposition + linear calibration)"
    paper = "https://arxiv.org/abs/2506.08436"
    removes = ("attention_qk", "attention_vo", "mlp")
    summary = (
        "Shrinks all three parts of every layer without training. Query/key: each projection becomes two "
        "thin ones (an SVD weighted by how strongly each input is used), and position encoding runs after "
        "them unchanged. Value/output: each value head is first turned, losslessly, so its dimensions line up "
        "with what the output projection writes most, then the weakest dimensions are dropped. MLP: drops the "
        "neurons with the smallest weight × activation scores. Finally, on the few layers where a linear map "
        "predicts the MLP best, a small low-rank 'linear calibration' branch is fitted to what pruning lost."
    )
    params = (
        Param("qk_factor", "float", 2.0, "query/key lose this × the layer's ratio (as parameters of their factors)",
              minimum=0.0, maximum=10.0),
        Param("vo_factor", "float", 0.5, "value/output lose this × the layer's ratio (2/(1+k), k=3 in the paper)",
              minimum=0.0, maximum=10.0),
        Param("calibrated_layers", "int", 6, "layers that get a linear-calibration side branch on their MLP "
              "(those whose output is most linearly predictable)", minimum=0, maximum=1000),
        Param("calibration_rank", "float", 0.03, "side-branch rank as a fraction of the hidden size",
              minimum=0.0, maximum=1.0),
        Param("calibration_ridge", "float", 0.5, "ridge of the calibration regression (fraction of the mean "
              "eigenvalue of the input Gram)", minimum=0.0, maximum=100.0),
        Param("round_to", "int", 8, "round MLP widths to a multiple of this", minimum=1, maximum=256),
    )
    structure_type = OlicaStructure

    @torch.no_grad()
    def compress(self, work, calibration: CalibrationSpec, plan: Plan, params: dict, progress: Reporter) -> MethodOutput:
        adapter = work.adapter
        heads = adapter.heads(work.model.config)
        originals = adapter.layers(work.lm.model)
        shapes, widths, rank = planned(adapter, work.lm.model, plan, params)
        unexplained, stages = None, {}
        if rank and params["calibrated_layers"] and any(s.mlp < w for s, w in zip(shapes, widths)):
            pre = Predictability(params["calibration_ridge"])
            stages = timed_pass(work, calibration, pre, progress, f"{self.name}: predictability", "predictability",
                                source=work.originals)
            unexplained = pre.unexplained
        ranks = calibration_ranks(shapes, widths, unexplained, rank, params["calibrated_layers"])
        inner = OlicaPass(adapter, heads, shapes, adapter.shrinks_heads(originals[0]))
        hooks = CompensatedPass(inner, adapter, ranks, ("mlp",), params["calibration_ridge"])
        stages |= timed_pass(work, calibration, hooks, progress, self.name, "decompose")
        structure = OlicaStructure(inner.mlp, [s.value_rank for s in shapes], [s.qk_rank for s in shapes],
                                   hooks.ranks["mlp"], list(heads), inner.shrink)
        query, key = [q for q, _k in structure.qk_rank], [k for _q, k in structure.qk_rank]
        return MethodOutput(
            widths={"mlp": structure.mlp, "value": structure.value_rank, "query_rank": query, "key_rank": key,
                    "calibration_rank": structure.calibration_rank},
            structure=structure,
            params_added={"linear calibration branches": hooks.params} if hooks.params else {},
            stage_seconds=stages,
            plots={"query/key rank": query, "value rank": structure.value_rank,
                   "calibration rank": structure.calibration_rank},
        )

    def plan_shapes(self, model: nn.Module, adapter: Adapter, plan: Plan, params: dict) -> bool:
        """The shapes ``compress`` gives: which layers get the side branches depends on the data, not their
        size, so the first candidates stand in."""
        shapes, widths, rank = planned(adapter, model, plan, params)
        ranks = calibration_ranks(shapes, widths, None, rank, params["calibrated_layers"])
        structure = OlicaStructure([s.mlp for s in shapes], [s.value_rank for s in shapes],
                                   [s.qk_rank for s in shapes], ranks, list(adapter.heads(model.config)),
                                   adapter.shrinks_heads(adapter.layers(model)[0]))
        self.rebuild(model, adapter, structure)
        return True

    @torch.no_grad()
    def rebuild(self, model: nn.Module, adapter: Adapter, structure: OlicaStructure) -> None:
        heads = tuple(structure.heads)
        head_dim = heads[2]
        for layer, width, rank, low in zip(adapter.layers(model), structure.mlp, structure.value_rank,
                                           structure.qk_rank):
            parts = adapter.parts_of(layer)
            decomposed_shapes(parts, width, rank, heads)
            for lin, r in zip((parts.query, parts.key), low):
                if r:
                    low_rank_shapes(lin, r)
            if rank < head_dim:
                narrow_heads(adapter, layer, None, rank, heads, structure.shrunk)
        rebuild_branches(model, adapter, {"mlp": structure.calibration_rank}, BIAS)
