"""Pair pruning, and FASP (Hu et al., 2025): structured pruning of linear pairs with restoration.

In every layer, MLP channels (``down_proj`` columns with the matching ``gate/up`` rows, or
``fc2`` columns with ``fc1`` rows) and value dims (``o_proj`` columns with the matching
``v_proj`` rows; Q/K untouched) are ranked by an importance score (``transforms.importance``;
FASP's is ``‖W_{:,j}‖₁·‖X_j‖₂``); the best are kept and, with restoration, the kept columns
of the second matrix are refitted by damped least squares, so the layer's output on
calibration data moves as little as possible. The driver runs layers in order on the already
pruned model, so each layer corrects for the errors of the ones before it.

``PairPruning`` is configured, not subclassed: FASP is wanda score + least squares, Wanda-SP
(``wanda_sp.py``) the same score with no restoration.

A plan ratio is the fraction of the layer's MLP + value/output parameters removed: both
parts lose that fraction (or only the part chosen). Value dims are pruned equally in every
KV group, so one narrower value head width serves the whole layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..calibration import CalibrationSpec
from ..models.adapters import Adapter
from ..params import DAMPINGS, DEFAULT_DAMPING, Param
from ..progress import Reporter
from ..stats import HalfOutcome, HalfStep, LayerHooks
from ..transforms.importance import SCORES, Importance
from ..transforms.prune import keep_top, keep_top_per_group, prune_pair, restore_columns
from ..transforms.value_heads import narrow_values, output_columns
from ..transforms.widths import kept_mlp_width, kept_value_dims
from .base import Method, MethodOutput, Plan, Structure, register, timed_pass


@dataclass
class PairPruningStructure(Structure):
    mlp: list[int]  # MLP width per layer
    value_kept: list  # per layer: the kept value rows (flat indices), or None when untouched
    heads: list[int]  # (query heads, KV heads, head dim) of the base model
    transformers_checkpoint: bool = False  # uniform MLP-only: the config alone says the shapes


def kept_mlp(width: int, ratio: float, params: dict) -> int:
    """The MLP width a layer keeps at ``ratio`` (all of it when only values are pruned)."""
    return kept_mlp_width(width, ratio, params["round_to"]) if "mlp" in params["parts"] else width


def kept_values(head_dim: int, ratio: float, params: dict) -> int:
    """The value dims per head a layer keeps at ``ratio`` (all of them when only the MLP is pruned)."""
    return kept_value_dims(head_dim, ratio) if "value" in params["parts"] else head_dim


class PairPruningPass(LayerHooks):
    """The driver pass: at each half, score the writer's input channels, keep the best, refit."""

    needs_last_output = False  # the last layer's output feeds nothing
    exact = False  # fused kernels: the pass is at its compute floor (bench/fasp_speed.py)

    def __init__(self, adapter: Adapter, heads: tuple[int, int, int], plan: Plan, params: dict,
                 score: Importance, restore: bool):
        self.adapter, self.heads, self.plan, self.params = adapter, heads, plan, params
        self.score, self.restore = score, restore
        self.mlp_widths: list[int] = []
        self.value_widths: list[int] = []
        self.value_kept: list[Optional[list[int]]] = []

    def half(self, step: HalfStep) -> Optional[HalfOutcome]:
        ratio = self.plan.ratios[step.index]
        if step.half == "attention":
            head_dim = self.heads[2]
            dv = kept_values(head_dim, ratio, self.params)
            kept_v = self._prune_values(step, dv) if dv < head_dim else None
            self.value_kept.append(kept_v.tolist() if kept_v is not None else None)
            self.value_widths.append(step.parts.value.out_features)
            return HalfOutcome(columns=step.writer.index if kept_v is not None else None)
        width = step.writer.in_features
        k = kept_mlp(width, ratio, self.params)
        kept = self._prune_mlp(step, k) if k < width else None
        self.mlp_widths.append(step.writer.in_features)
        return HalfOutcome(columns=kept)

    def _stats(self, step: HalfStep):
        has_bias = step.writer.bias is not None
        return step.stats(gram=self.restore or self.score.gram, sums=(self.restore and has_bias) or self.score.sums)

    def _refit(self, step: HalfStep, cols: torch.Tensor):
        """The restored columns; the statistics are handed over, so the Gram is freed before the
        solve (on a 1.1B model it is the largest buffer of the step)."""
        if not self.restore:
            return None
        self._stats(step)
        return restore_columns(step.writer.weight, step.writer.bias, step.release_stats(), cols,
                               None if self.params["damping"] == "gcv" else self.params["damp"])

    def _prune_values(self, step: HalfStep, k: int) -> torch.Tensor:
        """Keep ``k`` value dims per KV group; a dim's score sums over the query heads it feeds."""
        n_heads, n_kv, head_dim = self.heads
        scores = self.score.fn(step.writer.weight, self._stats(step))
        kept_v = keep_top_per_group(scores.view(n_kv, n_heads // n_kv, head_dim).sum(1), k)
        cols = output_columns(kept_v, self.heads)
        prune_pair([step.parts.value], step.writer, kept_v, cols, self._refit(step, cols))
        narrow_values(step.parts.value, step.writer, kept_v, self.heads)
        return kept_v

    def _prune_mlp(self, step: HalfStep, k: int) -> torch.Tensor:
        kept = keep_top(self.score.fn(step.writer.weight, self._stats(step)), k)
        prune_pair(step.parts.mlp_in, step.writer, kept, kept, self._refit(step, kept))
        return kept


class PairPruning(Method):
    """Prune linear pairs by an importance score, with or without least-squares restoration."""

    structure_type = PairPruningStructure
    removes = ("mlp", "attention_vo")

    def __init__(self, name: str, label: str, summary: str, score: str, restore: bool, paper: str = ""):
        self.name, self.label, self.summary, self.restore, self.paper = name, label, summary, restore, paper
        self.params = (
            Param("parts", "choice", "mlp+value", "what loses the plan's ratio: MLP channels, attention value dims, "
                  "or both", choices=("mlp+value", "mlp", "value")),
            Param("round_to", "int", 8, "round MLP widths to a multiple of this", minimum=1, maximum=256),
            Param("score", "choice", score, "channel importance: " + "; ".join(
                f"{s.name}: {s.help}" for s in SCORES.values()), choices=tuple(SCORES)),
        ) + ((Param("damping", "choice", DEFAULT_DAMPING, "how the least-squares damping is set: chosen per layer "
                    "from the data by generalized cross-validation (gcv), or the fixed fraction 'damp'",
                    choices=DAMPINGS),
              Param("damp", "float", 0.01, "fixed least-squares damping, as a fraction of the mean kept-channel energy",
                    minimum=0.0, maximum=10.0)) if restore else ())

    @torch.no_grad()
    def compress(self, work, calibration: CalibrationSpec, plan: Plan, params: dict, progress: Reporter) -> MethodOutput:
        adapter = work.adapter
        heads = adapter.heads(work.model.config)
        hooks = PairPruningPass(adapter, heads, plan, params, SCORES[params["score"]], self.restore)
        stages = timed_pass(work, calibration, hooks, progress, self.name,
                            "prune" + (" + restore" if self.restore else ""))
        plain = all(v is None for v in hooks.value_kept) and len(set(hooks.mlp_widths)) == 1
        if plain:  # uniform MLP-only: the config can say it, so the folder is a transformers checkpoint
            adapter.set_intermediate_size(work.model.config, hooks.mlp_widths[0])
        return MethodOutput(
            widths={"mlp": hooks.mlp_widths, "value": hooks.value_widths},
            structure=PairPruningStructure(hooks.mlp_widths, hooks.value_kept, list(heads), plain),
            stage_seconds=stages,
        )

    def plan_shapes(self, model, adapter, plan, params) -> bool:
        """The widths ``compress`` would keep; which value dims survive does not change the size, so the
        first ones of each KV group stand in."""
        heads = adapter.heads(model.config)
        n_kv, head_dim = heads[1], heads[2]
        mlp, value_kept = [], []
        for layer, ratio in zip(adapter.layers(model), plan.ratios):
            mlp.append(kept_mlp(adapter.parts_of(layer).mlp_out.in_features, ratio, params))
            dv = kept_values(head_dim, ratio, params)
            value_kept.append([g * head_dim + j for g in range(n_kv) for j in range(dv)] if dv < head_dim else None)
        self.rebuild(model, adapter, PairPruningStructure(mlp, value_kept, list(heads)))
        return True

    def rebuild(self, model: nn.Module, adapter: Adapter, structure: PairPruningStructure) -> None:
        rebuild_pairs(model, adapter, structure)


@torch.no_grad()
def rebuild_pairs(model: nn.Module, adapter: Adapter, structure: PairPruningStructure) -> None:
    """Recreate the pruned shapes (which MLP channels were kept does not matter for empty
    weights; which value dims were kept does, for the scatter/gather indices)."""
    heads = tuple(structure.heads)
    for layer, width, kept_v in zip(adapter.layers(model), structure.mlp, structure.value_kept):
        parts = adapter.parts_of(layer)
        if parts.mlp_out.in_features != width:
            keep = torch.arange(width)
            prune_pair(parts.mlp_in, parts.mlp_out, keep, keep)
        if kept_v is not None:
            kept_v = torch.tensor(kept_v, dtype=torch.long)
            prune_pair([parts.value], parts.attn_out, kept_v, output_columns(kept_v, heads))
            narrow_values(parts.value, parts.attn_out, kept_v, heads)


FASP = register(PairPruning(
    name="fasp",
    label="FASP (prune + least-squares restore)",
    summary=(
        "Removes whole MLP channels and attention value dimensions: a channel goes with its row in the first "
        "matrix and its column in the second. Channels are ranked by weight size times how strongly the "
        "calibration data drives them. Then the remaining columns of the second matrix are re-solved by least "
        "squares so the layer's output changes as little as possible, layer after layer. The model really "
        "shrinks and needs no extra matrices."
    ),
    score="wanda",
    restore=True,
    paper="https://arxiv.org/abs/2501.09412",
))
