"""PruneNet (Sengupta et al., ICLR 2025): calibration-free MLP pruning by a learned row policy.

Each MLP's intermediate neurons are the rows of its first matrix(es) (``gate`` and ``up`` side by
side, or ``fc1``). One small policy (``transforms.row_policy``) scores those rows from the weights
alone, trained by REINFORCE to keep each matrix's singular-value distribution (reward ``1/KS``);
at prune time every layer keeps its best-scored rows, with the matching ``down``/``fc2`` columns,
unchanged (no data, no restoration). A plan ratio is the fraction of the layer's MLP neurons, and
so of its MLP parameters, removed.

The trained policy is stored in the cache (``$SLIMLAB_CACHE/prunenet/<key>.safetensors``, the key
from the model's MLP weights and the training settings, not the ratio) and reused at any other
ratio without training, as the paper intends: one policy, many budgets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..calibration import CalibrationSpec
from ..models.adapters import Adapter
from ..params import Param
from ..progress import Reporter
from ..transforms.prune import prune_pair
from ..transforms.row_policy import RowPolicy, seeded_policy, top_rows, train_policy
from ..transforms.widths import kept_mlp_width
from ..trained_cache import digest, load_trained, save_trained, trained_path
from .base import Method, MethodOutput, Plan, register
from .fasp import PairPruningStructure, rebuild_pairs

POLICY_VERSION = 1  # raise when the policy's inputs or network change: older cached policies are not reused
TRAIN_STAGE = "prunenet: train policy"


@dataclass
class PruneNetStructure(PairPruningStructure):
    """Pair pruning's shapes (MLP widths only), and where the policy came from."""

    policy_key: str = ""
    rewards: list = field(default_factory=list)  # mean reward per training episode of the policy used
    trained_here: bool = True  # False: a cached policy was reused, no episode ran in this run


def neuron_rows(parts) -> torch.Tensor:
    """One row per intermediate neuron: its weights in every first MLP matrix, side by side (float32)."""
    return torch.cat([lin.weight.detach().float() for lin in parts.mlp_in], 1)


def policy_key(rows: list[torch.Tensor], params: dict) -> str:
    """What decides a trained policy: the MLP weights it learned from and the training settings."""
    return digest({"version": POLICY_VERSION, "episodes": params["episodes"], "lr": params["lr"],
                   "seed": params["seed"]}, rows)


def policy_path(key: str) -> Path:
    return trained_path("prunenet", key)


def load_policy(key: str, features: int) -> Optional[tuple[RowPolicy, list[float]]]:
    """The cached policy and its training curve, or None when there is none for ``key``."""
    stored = load_trained("prunenet", key, lambda: RowPolicy(features))
    return None if stored is None else (stored[0], stored[1]["rewards"])


def save_policy(key: str, policy: RowPolicy, rewards: list[float], trained_at: float) -> None:
    save_trained("prunenet", key, policy, rewards=rewards, trained_at=trained_at)


@register
class PruneNet(Method):
    name = "prunenet"
    label = "PruneNet (learned policy, no data)"
    paper = "https://arxiv.org/abs/2501.15296"
    removes = ("mlp",)
    summary = (
        "Removes MLP neurons without any calibration text. A small network looks at each neuron's weights and "
        "scores it; it is trained by trial and error (reinforcement learning) to keep the neurons whose removal "
        "changes the shape of the layer's singular-value spectrum least. The trained policy is stored and "
        "reused at any other ratio without training. The ratio is the share of every MLP removed."
    )
    needs_calibration = False
    structure_type = PruneNetStructure
    params = (
        Param("episodes", "int", 20, "training episodes of the policy (each samples a choice in every layer)",
              minimum=1, maximum=1000),
        Param("lr", "float", 1e-3, "the policy's learning rate (Adam)", minimum=1e-6, maximum=1.0),
        Param("seed", "int", 0, "seed of the policy's initial weights and of the sampled choices",
              minimum=0, maximum=2**31 - 1),
        Param("reuse", "bool", True, "reuse the policy trained before on this model with these settings (any "
              "ratio); off: train again"),
        Param("round_to", "int", 8, "round MLP widths to a multiple of this", minimum=1, maximum=256),
    )

    def compress(self, work, calibration: Optional[CalibrationSpec], plan: Plan, params: dict,
                 progress: Reporter) -> MethodOutput:
        adapter, source = work.adapter, work.originals
        rows = []
        for i in range(work.num_layers):
            layer = source.open(i)
            rows.append(neuron_rows(adapter.parts_of(layer)).to(work.device))
            source.close(i, layer)
        budgets = [kept_mlp_width(r.shape[0], ratio, params["round_to"]) for r, ratio in zip(rows, plan.ratios)]
        policy, rewards, trained, key = self._policy(rows, budgets, plan, params, progress)
        policy.to(work.device)
        for i, k in enumerate(budgets):
            layer = work.open(i)
            if k < rows[i].shape[0]:
                kept = top_rows(policy, rows[i], k)
                parts = adapter.parts_of(layer)
                prune_pair(parts.mlp_in, parts.mlp_out, kept, kept)
            work.close(i, layer)
            progress(self.name, i + 1, work.num_layers)
        plain = len(set(budgets)) == 1
        if plain:  # uniform widths: the config says it, so the folder is a transformers checkpoint
            adapter.set_intermediate_size(work.model.config, budgets[0])
        structure = PruneNetStructure(budgets, [None] * len(budgets), list(adapter.heads(work.model.config)),
                                      plain, key, rewards, trained)
        return MethodOutput(widths={"mlp": budgets}, structure=structure,
                            plots={"policy reward": {
                                "curve": rewards, "title": "PruneNet policy: mean reward per training episode",
                                "x_label": "episode", "y_label": "mean reward (1 / KS distance of the spectra)",
                                "note": "trained in this run" if trained else "a stored policy, reused: no training",
                                "trained_here": trained, "policy": str(policy_path(key)) if rewards else ""}})

    def _policy(self, rows: list[torch.Tensor], budgets: list[int], plan: Plan, params: dict,
                progress: Reporter) -> tuple[RowPolicy, list[float], bool, str]:
        """(policy, its training curve, whether it was trained in this run, its cache key)."""
        key = policy_key(rows, params)
        cached = load_policy(key, rows[0].shape[1]) if params["reuse"] else None
        if cached is not None:
            return cached[0], cached[1], False, key
        policy = seeded_policy(rows[0].shape[1], params["seed"]).to(rows[0].device)
        if all(k == r.shape[0] for r, k in zip(rows, budgets)):  # nothing is pruned: nothing to learn
            return policy, [], False, key

        def report(episode: int, reward: float) -> None:
            progress(TRAIN_STAGE, episode + 1, params["episodes"], f"mean reward {reward:.2f}")

        training = train_policy(policy, rows, budgets, params["episodes"], params["lr"], params["seed"],
                                on_episode=report, check=progress.check)
        save_policy(key, policy, training.rewards, plan.target)
        return policy, training.rewards, True, key

    def plan_shapes(self, model, adapter, plan, params) -> bool:
        widths = [kept_mlp_width(adapter.parts_of(layer).mlp_out.in_features, ratio, params["round_to"])
                  for layer, ratio in zip(adapter.layers(model), plan.ratios)]
        heads = list(adapter.heads(model.config))
        self.rebuild(model, adapter, PairPruningStructure(widths, [None] * len(widths), heads))
        return True

    def rebuild(self, model: nn.Module, adapter: Adapter, structure: PairPruningStructure) -> None:
        rebuild_pairs(model, adapter, structure)
