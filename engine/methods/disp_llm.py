"""DISP-LLM (Gao et al., NeurIPS 2024): dimension-independent structural pruning.

The residual stream keeps its full width; every block reads its own subset of channels after its
norm and writes its own subset back, and each MLP keeps its own neurons (``transforms.block_channels``),
so no layer's choice constrains another's. The five selections per layer come from a small
hypernetwork (``transforms.selection_net``: per-layer embeddings → bi-GRU → linear heads →
Gumbel-sigmoid, straight-through) trained with the model's weights frozen on the LM loss of the
calibration text plus ``λ·|log(params/target)|``. The plan's target is the fraction of the layers'
linear parameters removed (as for the other methods); the selection read off at the end hits it to
within one channel. The paper's code trains 10,000 steps of 2048 tokens with λ=16, lr 1e-3; here the
budget is ``steps`` short windows (a few hundred run in minutes on a CPU), the same code on a GPU.

Every adapter's architecture is cut the same way (Llama family, Qwen2/3, OPT, Gemma 3: the masks and the
cut sit on the norms and linears every adapter names). A model that streams its layers from disk is
refused: training runs the whole model at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..calibration import CalibrationSpec
from ..errors import ConfigError
from ..models.adapters import Adapter
from ..params import Param
from ..progress import CurvePoint, Reporter
from ..trained_cache import digest, load_trained, save_trained
from ..transforms.block_channels import MaskBox, masked, select_channels
from ..transforms.selection_net import (KINDS, LayerCost, Selection, final_selection, seeded_net,
                                        train_selection)
from .base import Method, MethodOutput, Plan, Structure, register

NET_VERSION = 1  # raise when the network or its inputs change: older stored networks are not reused
TRAIN_STAGE = "disp-llm: train selections"
LOSS_CURVE, RATIO_CURVE = "DISP-LLM: LM loss", "DISP-LLM: kept share of the layers' parameters"  # drawn live
LABELS = {"attn_in": "attention reads", "attn_out": "attention writes", "mlp_in": "MLP reads",
          "mlp_mid": "MLP neurons", "mlp_out": "MLP writes"}


@dataclass
class DispStructure(Structure):
    """Kept channel indices (ascending) per layer, one list per selection kind (saved as tensors: about 1 MB
    of JSON on the demo model otherwise)."""

    TENSOR_FIELDS = KINDS

    attn_in: list[list[int]]
    attn_out: list[list[int]]
    mlp_in: list[list[int]]
    mlp_mid: list[list[int]]
    mlp_out: list[list[int]]

    @classmethod
    def of(cls, kept: list[Selection]) -> "DispStructure":
        return cls(**{k: [layer[k].tolist() for layer in kept] for k in KINDS})

    def selections(self) -> list[Selection]:
        lists = {k: getattr(self, k) for k in KINDS}
        return [{k: torch.tensor(lists[k][i], dtype=torch.long) for k in KINDS} for i in range(len(self.attn_in))]


def network_key(layers: nn.ModuleList, calibration: CalibrationSpec, plan: Plan, params: dict) -> str:
    """What decides a trained selection network: the layers' weights, the calibration tokens, the target and
    the training settings (not ``reuse``)."""
    settings = {k: v for k, v in params.items() if k != "reuse"} | {"version": NET_VERSION, "target": plan.target}
    return digest(settings, [calibration.tokens, *layers.state_dict().values()])


def windows(tokens: torch.Tensor, seqlen: int) -> torch.Tensor:
    """The calibration windows cut into ``seqlen``-token training windows (a shorter calibration: as is)."""
    if tokens.shape[1] <= seqlen:
        return tokens
    per = tokens.shape[1] // seqlen
    return tokens[:, :per * seqlen].reshape(-1, seqlen)


@register
class DispLLM(Method):
    name = "disp-llm"
    label = "DISP-LLM (learned per-block channels)"
    paper = "https://arxiv.org/abs/2410.11988"
    removes = ("residual", "mlp")  # each block reads and writes its own subset of the residual channels
    summary = (
        "Lets every block of the model read and write its own subset of the residual stream's channels, "
        "instead of one width shared by all layers, and keeps its own MLP neurons. A small network proposes "
        "all these choices at once and is trained on the calibration text, with the model's weights frozen, "
        "to keep the language-model loss low while the kept parameters reach the target. The chosen weights "
        "are then cut out; the model keeps small index lists saying which channels each block uses. "
        "Training is a number of short steps (a few hundred on a CPU in minutes; the paper trains for hours "
        "on GPUs)."
    )
    params = (
        Param("steps", "int", 200, "training steps of the selection network (each one batch of windows)",
              minimum=1, maximum=100_000),
        Param("seqlen", "int", 128, "tokens per training window (calibration windows are cut to this)",
              minimum=8, maximum=8192),
        Param("batch", "int", 4, "windows per training step", minimum=1, maximum=256),
        Param("lr", "float", 1e-3, "learning rate of the selection network (Adam)", minimum=1e-6, maximum=1.0),
        Param("penalty", "float", 16.0, "λ: weight of |log(kept parameters / target)| in the loss",
              minimum=0.0, maximum=1000.0),
        Param("temperature", "float", 0.4, "temperature of the Gumbel-sigmoid", minimum=0.01, maximum=10.0),
        Param("seed", "int", 0, "seed of the network's weights, the sampled masks and the window order",
              minimum=0, maximum=2**31 - 1),
        Param("reuse", "bool", True, "reuse the network trained before on this model, calibration, ratio and "
              "settings (stored in the cache); off: train again"),
    )
    uses_plan = False  # the network spreads the target over layers and blocks itself
    structure_type = DispStructure

    def compress(self, work, calibration: Optional[CalibrationSpec], plan: Plan, params: dict,
                 progress: Reporter) -> MethodOutput:
        if work.lm.layer_reader is not None:
            raise ConfigError("disp-llm trains through the whole model at once; load the model in memory "
                              "(not streamed from disk) to use it.")
        adapter = work.adapter
        for i in range(work.num_layers):  # the whole model, copied: training runs it end to end
            work.close(i, work.open(i))
        work.assemble()
        layers = adapter.layers(work.model)
        costs = [LayerCost.of(adapter.parts_of(layer)) for layer in layers]
        full = sum(c.full for c in costs)
        target = (1 - plan.target) * full
        net, curves, trained = seeded_net(costs, params["seed"]), {"loss": [], "ratio": []}, False
        if plan.target > 0:
            key = network_key(layers, calibration, plan, params)
            stored = load_trained(self.name, key, lambda: seeded_net(costs, params["seed"])) \
                if params["reuse"] else None
            if stored is not None:
                net, curves = stored[0], stored[1]["curves"]
            else:
                net.to(work.device)
                curves, trained = self._train(work, net, costs, target, calibration, params, progress), True
                save_trained(self.name, key, net, curves=curves)
        with torch.no_grad():
            kept = final_selection(net.logits(), costs, target)
        for layer, selection in zip(layers, kept):
            select_channels(layer, adapter, selection)
        structure = DispStructure.of(kept)
        widths = {k: [len(x) for x in getattr(structure, k)] for k in KINDS}
        steps = f"{len(curves['loss'])} steps of {params['batch']} × {params['seqlen']} tokens"
        return MethodOutput(widths=widths, structure=structure, plots={
            "selection training": {  # the first curve: the Compress tab's curve slot draws it
                "curve": curves["loss"], "title": "DISP-LLM: LM loss per training step", "x_label": "step",
                "y_label": "LM loss (nats/token)",
                "note": f"{steps}; λ = {params['penalty']}, lr {params['lr']}; the model's weights frozen"
                        + ("" if trained or not curves["loss"] else "; a stored network, reused: no training"),
                "trained_here": trained},
            "kept parameters": {
                "curve": curves["ratio"], "x_label": "step", "y_label": "kept / full",
                "title": f"DISP-LLM: sampled masks' share of the layers' parameters (target {1 - plan.target:.3f})"},
            "kept channels": {LABELS[k]: widths[k] for k in KINDS},
        })

    def _train(self, work, net: nn.Module, costs: list[LayerCost], target: float, calibration: CalibrationSpec,
               params: dict, progress: Reporter) -> dict:
        model, adapter = work.model, work.adapter
        model.eval()
        data = windows(calibration.tokens, params["seqlen"])
        order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(params["seed"]))
        device = adapter.token_embedding(model).weight.device
        box = MaskBox()

        def lm_loss(step: int, masks: list[Selection]) -> torch.Tensor:
            box.masks = masks
            picks = order[(step * params["batch"] + torch.arange(params["batch"])) % data.shape[0]]
            batch = data[picks].to(device)
            return model(input_ids=batch, labels=batch, use_cache=False).loss

        def report(step: int, loss: float, ratio: float) -> None:  # two events: one live point on each curve
            message = f"loss {loss:.3f}, kept {ratio:.3f}"
            progress(TRAIN_STAGE, step + 1, params["steps"], message, CurvePoint(LOSS_CURVE, step + 1, loss))
            progress(TRAIN_STAGE, step + 1, params["steps"], message, CurvePoint(RATIO_CURVE, step + 1, ratio))

        with masked(adapter.layers(model), adapter, box):
            training = train_selection(net, costs, target, lm_loss, params["steps"], params["lr"],
                                       params["penalty"], params["temperature"], params["seed"], on_step=report,
                                       check=progress.check)
        return {"loss": training.loss, "ratio": training.ratio}

    def rebuild(self, model: nn.Module, adapter: Adapter, structure: DispStructure) -> None:
        for layer, selection in zip(adapter.layers(model), structure.selections()):
            select_channels(layer, adapter, selection)
