"""Which parameters and linears a recovery trains, by group, found through the adapter.

Groups: ``attention`` (q/k/v/o), ``mlp`` (gate/up/down or fc1/fc2), ``norms`` (the layers'
norms and the final norm), ``embeddings`` (token and position embeddings; a tied head is the
same tensor, so it is trained with them and stays tied), ``head`` (an untied output head).
"""
from __future__ import annotations

from torch import nn

from ..models.adapters import Adapter


def group_modules(model: nn.Module, adapter: Adapter, group: str) -> list[nn.Module]:
    """The modules of ``group`` across the model (some may hold no parameters, e.g. a folded norm)."""
    if group in ("attention", "mlp"):
        out: list[nn.Module] = []
        for layer in adapter.layers(model):
            parts = adapter.parts_of(layer)
            out += [parts.query, parts.key, parts.value, parts.attn_out] if group == "attention" \
                else parts.mlp_in + [parts.down]
        return out
    if group == "norms":
        return [n for layer in adapter.layers(model) for n in adapter.parts_of(layer).norms] + [adapter.final_norm(model)]
    if group == "embeddings":
        return [m for m in (adapter.token_embedding(model), adapter.position_embedding(model)) if m is not None]
    if group == "head":
        return [] if adapter.is_tied(model) else [adapter.head(model)]
    raise ValueError(f"unknown recovery group {group!r}")


def group_parameters(model: nn.Module, adapter: Adapter, groups: list[str]) -> list[nn.Parameter]:
    """The parameters of ``groups``, each once (a tied tensor is one parameter)."""
    seen: dict[int, nn.Parameter] = {}
    for group in groups:
        for module in group_modules(model, adapter, group):
            for p in module.parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())


def lora_targets(model: nn.Module, adapter: Adapter, groups: list[str]) -> tuple[list[str], list[str]]:
    """(names of the plain ``nn.Linear`` layers of ``groups`` to adapt, names left out).

    LoRA adds ``B·A·x`` to a linear's output, with ``A`` as wide as its input and ``B`` as its
    output. The value-pruning linears (``ScatterLinear``/``GatherLinear``) are ``nn.Linear``
    subclasses whose forward scatters the output or gathers the input, so peft would wrap them
    and then add a product of the wrong width; they are left out (full fine-tuning trains them)."""
    wanted = {id(m) for g in groups if g in ("attention", "mlp") for m in group_modules(model, adapter, g)}
    names, skipped = [], []
    for name, module in model.named_modules():
        if id(module) in wanted:
            (names if type(module) is nn.Linear else skipped).append(name)
    return names, skipped
