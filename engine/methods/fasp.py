"""FASP (Hu et al., 2025): structured pruning of linear pairs with least-squares restoration.

In every layer, MLP channels (``down_proj`` columns with the matching ``gate/up`` rows, or
``fc2`` columns with ``fc1`` rows) and value dims (``o_proj`` columns with the matching
``v_proj`` rows; Q/K untouched) are scored by ``‖W_{:,j}‖₁·‖X_j‖₂``; the best are kept and
the kept columns of the second matrix are refitted by damped least squares, so the layer's
output on calibration data moves as little as possible. Layers are processed in order on
the already pruned model, so each layer corrects for the errors of the ones before it.

A plan ratio is the fraction of the layer's MLP + value/output parameters removed: both
parts lose that fraction (or only the part chosen). Value dims are pruned equally in every
KV group, so one narrower value head width serves the whole layer.
"""
from __future__ import annotations

import time
from typing import ClassVar

import torch
from torch import nn

from ..models.adapters import Adapter, normalize
from ..progress import Reporter
from ..stats import InputStats, bypassed, capture_layer_inputs
from ..transforms.prune import channel_scores, keep_top, keep_top_per_group, prune_pair
from ..transforms.value_heads import narrow_values, output_columns
from .base import Calibration, Method, MethodOutput, Param, Plan, register

MLP_WIDTH_KEYS = ("intermediate_size", "ffn_dim")  # where configs keep the MLP width (llama family, OPT)


def kept_mlp_width(width: int, ratio: float, multiple: int) -> int:
    """``(1 - ratio)·width`` rounded to the nearest multiple (at least one multiple)."""
    return min(width, max(multiple, multiple * round((1 - ratio) * width / multiple)))


def kept_value_dims(head_dim: int, ratio: float) -> int:
    return max(1, round((1 - ratio) * head_dim))


def residual_plus(residuals: list[torch.Tensor], inputs: list[torch.Tensor], linear: nn.Linear,
                  columns: "torch.Tensor | None") -> list[torch.Tensor]:
    """``r + linear(x[..., columns])`` per batch, as one GEMM that also does the add.

    The pruned weight is scattered into zero columns so all of ``x`` is read: on a CPU,
    gathering the kept columns of a [4096, 1536] activation costs more than the multiply it
    saves."""
    weight = linear.weight
    if columns is not None:
        weight = weight.new_zeros(weight.shape[0], inputs[0].shape[-1]).index_copy_(1, columns, weight)
    out = []
    for r, x in zip(residuals, inputs):
        y = torch.addmm(r.reshape(-1, r.shape[-1]), x.reshape(-1, x.shape[-1]), weight.T)
        if linear.bias is not None:
            y += linear.bias
        out.append(y.view_as(r))
    return out


@register
class FASP(Method):
    name = "fasp"
    label = "FASP (prune + least-squares restore)"
    summary = (
        "Removes whole MLP channels and attention value dimensions: a channel goes with its row in the first "
        "matrix and its column in the second. Channels are ranked by weight size times how strongly the "
        "calibration data drives them. Then the remaining columns of the second matrix are re-solved by least "
        "squares so the layer's output changes as little as possible, layer after layer. The model really "
        "shrinks and needs no extra matrices."
    )
    params = (
        Param("parts", "choice", "mlp+value", "what loses the plan's ratio: MLP channels, attention value dims, "
              "or both", choices=("mlp+value", "mlp", "value")),
        Param("round_to", "int", 8, "round MLP widths to a multiple of this", minimum=1, maximum=256),
        Param("damp", "float", 0.01, "least-squares damping, as a fraction of the mean kept-channel energy",
              minimum=0.0, maximum=10.0),
    )
    restore: ClassVar[bool] = True

    # --- compression ------------------------------------------------------
    @torch.no_grad()
    def compress(self, model: nn.Module, adapter: Adapter, calibration: Calibration, plan: Plan, params: dict,
                 progress: Reporter) -> MethodOutput:
        t = time.perf_counter()
        heads = adapter.heads(model.config)
        layers = adapter.layers(model)
        inputs = capture_layer_inputs(model, adapter, calibration.tokens, calibration.batch_size)
        stages = {"capture inputs": time.perf_counter() - t}
        t = time.perf_counter()
        prune_mlp, prune_value = "mlp" in params["parts"], "value" in params["parts"]
        x = inputs.hidden
        mlp_widths, value_widths, value_kept = [], [], []
        for i, layer in enumerate(layers):
            progress(self.name, i, len(layers), f"layer {i}")
            parts = adapter.parts_of(layer)
            attn_norm, mlp_norm = (getattr(layer, n) for n in adapter.norm_names)
            ratio = plan.ratios[i]
            # attention half: the input of the output projection decides which value dims stay
            with bypassed(layer, parts.attn_out):
                attn_in = [adapter.run_attention(layer, normalize(attn_norm, h), kw) for h, kw in zip(x, inputs.kwargs)]
            dv = kept_value_dims(heads[2], ratio) if prune_value else heads[2]
            kept_v = self._prune_values(parts, attn_in, dv, heads, params) if dv < heads[2] else None
            mid = residual_plus(x, attn_in, parts.attn_out, parts.attn_out.index if kept_v is not None else None)
            del attn_in
            # MLP half, on the output of the already pruned attention
            with bypassed(layer, parts.mlp_out):
                hidden = [adapter.run_mlp(layer, normalize(mlp_norm, m)) for m in mid]
            width = parts.mlp_out.in_features
            k = kept_mlp_width(width, ratio, params["round_to"]) if prune_mlp else width
            kept = self._prune_mlp(parts, hidden, k, params) if k < width else None
            if i + 1 < len(layers):  # the last layer's output feeds nothing
                x = residual_plus(mid, hidden, parts.mlp_out, kept)
            del mid, hidden
            mlp_widths.append(parts.mlp_out.in_features)
            value_widths.append(parts.value.out_features)
            value_kept.append(kept_v.tolist() if kept_v is not None else None)
            progress.check()
        progress(self.name, len(layers), len(layers), "done")
        stages["prune" + (" + restore" if self.restore else "")] = time.perf_counter() - t
        plain = all(v is None for v in value_kept) and len(set(mlp_widths)) == 1
        if plain:  # uniform MLP-only: the config can say it, so the folder is a transformers checkpoint
            setattr(model.config, self._mlp_key(model.config), mlp_widths[0])
        return MethodOutput(
            widths={"mlp": mlp_widths, "value": value_widths},
            structure={"mlp": mlp_widths, "value_kept": value_kept, "heads": list(heads),
                       "transformers_checkpoint": plain},
            stage_seconds=stages,
        )

    def _prune_values(self, parts, attn_in: list[torch.Tensor], k: int, heads: tuple[int, int, int],
                      params: dict) -> torch.Tensor:
        """Keep ``k`` value dims per KV group; a dim's score sums over the query heads it feeds."""
        n_heads, n_kv, head_dim = heads
        has_bias = parts.attn_out.bias is not None
        stats = InputStats.of(attn_in, gram=self.restore, sums=has_bias)
        scores = channel_scores(parts.attn_out.weight, stats.norms)
        kept_v = keep_top_per_group(scores.view(n_kv, n_heads // n_kv, head_dim).sum(1), k)
        cols = output_columns(kept_v, heads)
        h_cols = stats.cross_gram(cols, ones=has_bias) if self.restore else None
        prune_pair([parts.value], parts.attn_out, kept_v, cols, h_cols, params.get("damp", 0.0))
        narrow_values(parts.value, parts.attn_out, kept_v, heads)
        return kept_v

    def _prune_mlp(self, parts, hidden: list[torch.Tensor], k: int, params: dict) -> torch.Tensor:
        has_bias = parts.mlp_out.bias is not None
        stats = InputStats.of(hidden, gram=self.restore, sums=has_bias)
        kept = keep_top(channel_scores(parts.mlp_out.weight, stats.norms), k)
        h_cols = stats.cross_gram(kept, ones=has_bias) if self.restore else None
        prune_pair(parts.mlp_in, parts.mlp_out, kept, kept, h_cols, params.get("damp", 0.0))
        return kept

    @staticmethod
    def _mlp_key(config) -> str:
        return next(key for key in MLP_WIDTH_KEYS if hasattr(config, key))

    # --- reload -----------------------------------------------------------
    @torch.no_grad()
    def rebuild(self, model: nn.Module, adapter: Adapter, structure: dict) -> None:
        """Recreate the pruned shapes (which MLP channels were kept does not matter for empty
        weights; which value dims were kept does, for the scatter/gather indices)."""
        heads = tuple(structure["heads"])
        for layer, width, kept_v in zip(adapter.layers(model), structure["mlp"], structure["value_kept"]):
            parts = adapter.parts_of(layer)
            if parts.mlp_out.in_features != width:
                keep = torch.arange(width)
                prune_pair(parts.mlp_in, parts.mlp_out, keep, keep)
            if kept_v is not None:
                kept_v = torch.tensor(kept_v, dtype=torch.long)
                prune_pair([parts.value], parts.attn_out, kept_v, output_columns(kept_v, heads))
                narrow_values(parts.value, parts.attn_out, kept_v, heads)
