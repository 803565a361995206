"""Where the parameters are: per module type and per layer.

On small models the embedding is a large share of the weights and structured methods only
shrink the transformer body; this breakdown makes that visible before anyone compresses.
Every tensor is counted once (a tied head is not counted twice).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from ..models.adapters import Adapter

LAYER_GROUPS = ("attention", "mlp", "norms", "other")


@dataclass
class ModuleParams:
    by_type: dict[str, int]  # "embedding", "self_attn.q_proj" (summed over layers), "head", ...
    per_layer: list[dict[str, int]]  # one {group: params} per layer, groups as LAYER_GROUPS
    total: int

    def to_dict(self) -> dict:
        return asdict(self)


def _count(params: dict[int, nn.Parameter]) -> int:
    return sum(p.numel() for p in params.values())


def _params_of(modules: list[nn.Module]) -> dict[int, nn.Parameter]:
    return {id(p): p for m in modules for p in m.parameters()}


def module_params(model: nn.Module, adapter: Adapter) -> ModuleParams:
    """Parameters per module type (leaf path inside a layer) and per layer group."""
    seen: set[int] = set()
    by_type: dict[str, int] = {}

    def add(key: str, params: dict[int, nn.Parameter]) -> None:
        fresh = {k: p for k, p in params.items() if k not in seen}
        seen.update(fresh)
        if fresh:
            by_type[key] = by_type.get(key, 0) + _count(fresh)

    add("embedding", _params_of([adapter.token_embedding(model)]))
    pos = adapter.position_embedding(model)
    if pos is not None:
        add("position embedding", _params_of([pos]))
    per_layer = []
    for layer in adapter.layers(model):
        parts = adapter.parts_of(layer)
        groups = {
            "attention": _params_of(parts.attn_in + [parts.attn_out]),
            "mlp": _params_of(parts.mlp_in + [parts.mlp_out]),
            "norms": _params_of(parts.norms),
        }
        known = set().union(*groups.values())
        groups["other"] = {k: p for k, p in _params_of([layer]).items() if k not in known}
        per_layer.append({g: _count(groups[g]) for g in LAYER_GROUPS})
        for name, p in layer.named_parameters():
            add(name.rsplit(".", 1)[0] if "." in name else name, {id(p): p})
    add("final norm", _params_of([adapter.final_norm(model)]))
    add("head", _params_of([adapter.head(model)]))
    add("other", _params_of([model]))
    return ModuleParams(by_type=by_type, per_layer=per_layer, total=_count(_params_of([model])))
