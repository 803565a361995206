"""LoRA adapters through peft, and their merge back into the plain weights.

Merged, a LoRA-healed model has exactly the compressed model's modules and shapes, so it
saves and reloads like any other compressed model; ``merge`` checks on a probe window that
the merged logits equal the adapted ones.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SlimLabError
from ..models.adapters import Adapter
from ..recipes import RecoverySpec
from .groups import lora_targets

MERGE_TOLERANCE = 1e-4  # max |logit| difference merged vs adapted, relative to the logits' scale


def attach(model: nn.Module, adapter: Adapter, spec: RecoverySpec) -> tuple[nn.Module, list[str], list[str]]:
    """(peft-wrapped model, adapted linear names, linears left out); the A matrices are drawn seeded."""
    from peft import LoraConfig, get_peft_model

    names, left_out = lora_targets(model, adapter, spec.groups)
    if not names:
        raise SlimLabError(f"LoRA found no plain linear layers in the groups {spec.groups}; use kind=full.")
    config = LoraConfig(r=spec.rank, lora_alpha=2 * spec.rank, lora_dropout=0.0, bias="none", target_modules=names)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(spec.seed)  # peft draws the A matrices from the global generator
        wrapped = get_peft_model(model, config)
    return wrapped, names, left_out


def adapter_parameters(wrapped: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in wrapped.named_parameters() if "lora_" in n]


@torch.no_grad()
def merge(wrapped: nn.Module, probe: torch.Tensor) -> nn.Module:
    """Fold the adapters into the base weights and drop them; the merged model's logits on
    ``probe`` must equal the adapted model's (else an adapter sat on a layer it cannot merge into)."""
    device = next(wrapped.parameters()).device
    before = wrapped(input_ids=probe.to(device), use_cache=False).logits.float()
    merged = wrapped.merge_and_unload()
    after = merged(input_ids=probe.to(device), use_cache=False).logits.float()
    gap = float((after - before).abs().max())
    if gap > MERGE_TOLERANCE * max(1.0, float(before.abs().max())):
        raise SlimLabError(f"Internal error: merging LoRA changed the logits by {gap:.2e}. Please report it.")
    return merged
