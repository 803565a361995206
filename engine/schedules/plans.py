"""Turn a target mean ratio into per-layer ratios.

- ``uniform``: every layer the same.
- ``layer-redundancy`` (Dumitru et al.): ``FS_i = SB + (SP - SB) n_i / mean(n)`` with n the
  normalised redundancy, slicing base SB <= target SP; clamped with the excess redistributed.
- ``block-influence`` (MoDeGPT allocation): ``L * SP * softmax(-BI / eps)``, clamped likewise.
- ``manual:FILE``: ratios from a JSON/YAML list or recipe.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional

from ..errors import ConfigError
from ..methods.base import Plan

SCHEDULES = ("uniform", "layer-redundancy", "block-influence", "manual")
DEFAULT_MAX_RATIO = 0.9


def check_ratio(ratio: float, what: str = "ratio") -> float:
    ratio = float(ratio)
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise ConfigError(f"{what} must be in [0, 1) — the fraction to remove — got {ratio}.")
    return ratio


def redistribute_to_mean(weights: list[float], target: float, base: float, cap: float) -> list[float]:
    """``r_i = base + c * w_i`` with c chosen so mean(r) = target, layers above ``cap`` clamped
    to it and their excess spread over the rest (water-filling)."""
    n = len(weights)
    if target > cap:
        raise ConfigError(f"Target {target} exceeds the per-layer maximum {cap}.")
    fixed: set[int] = set()
    while True:
        free = [i for i in range(n) if i not in fixed]
        budget = n * target - cap * len(fixed) - base * len(free)
        wsum = sum(weights[i] for i in free)
        ratios = [cap] * n
        for i in free:
            ratios[i] = base + (budget * weights[i] / wsum if wsum > 1e-12 else budget / len(free))
        over = [i for i in free if ratios[i] > cap + 1e-12]
        if not over:
            return [min(max(r, 0.0), cap) for r in ratios]
        fixed.update(over)


def load_manual_ratios(path: str) -> list[float]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"Schedule file not found: {path}")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise ConfigError(f"Schedule file {path} is not valid {p.suffix[1:] or 'JSON'}: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("ratios", (data.get("plan") or {}).get("ratios"))
    if not isinstance(data, list) or not all(isinstance(x, (int, float)) for x in data):
        raise ConfigError(f"Schedule file {path} must hold a list of per-layer ratios, or {{\"ratios\": [...]}}.")
    return [check_ratio(x, "each per-layer ratio") for x in data]


def build_plan(
    schedule: str,
    target: float,
    num_layers: int,
    scores: Optional[Callable[[], list[float]]] = None,
    slicing_base: Optional[float] = None,
    max_ratio: float = DEFAULT_MAX_RATIO,
    temperature: float = 0.015,
) -> Plan:
    """``scores`` lazily computes block influence per layer (only schedules that need it call it)."""
    target = check_ratio(target, "target ratio")
    name, _, arg = schedule.partition(":")
    if name == "uniform":
        return Plan("uniform", target, [target] * num_layers)
    if name == "manual":
        if not arg:
            raise ConfigError("Use --schedule manual:FILE with a JSON/YAML list of per-layer ratios.")
        ratios = load_manual_ratios(arg)
        if len(ratios) != num_layers:
            raise ConfigError(f"Schedule file {arg} has {len(ratios)} ratios but the model has {num_layers} layers.")
        return Plan("manual", sum(ratios) / num_layers, ratios, options={"file": arg})
    if name in ("layer-redundancy", "block-influence"):
        if scores is None:
            raise ConfigError(f"Schedule '{name}' needs calibration data to score layers.")
        bi = scores()
        if name == "layer-redundancy":
            from ..analysis.layer_scores import layer_redundancy

            base = target if slicing_base is None else check_ratio(slicing_base, "slicing base")
            if base > target:
                raise ConfigError(f"Slicing base {base} must not exceed the target {target}.")
            lr = layer_redundancy(bi)
            ratios = redistribute_to_mean(lr, target, base, max_ratio)
            return Plan(name, target, ratios, scores=lr, options={"slicing_base": base, "max_ratio": max_ratio,
                                                                 "block_influence": bi})
        weights = _softmax([-b / temperature for b in bi])
        ratios = redistribute_to_mean(weights, target, 0.0, max_ratio)
        return Plan(name, target, ratios, scores=bi, options={"temperature": temperature, "max_ratio": max_ratio})
    raise ConfigError(f"Unknown schedule '{schedule}'. Use one of: uniform, layer-redundancy, block-influence, "
                      "manual:FILE.")


def _softmax(x: list[float]) -> list[float]:
    m = max(x)
    e = [math.exp(v - m) for v in x]
    s = sum(e)
    return [v / s for v in e]
