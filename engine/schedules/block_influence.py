"""``block-influence`` (MoDeGPT's allocation): ``L * SP * softmax(-BI / eps)``, clamped at
``max_ratio`` with the excess redistributed."""
from __future__ import annotations

import math

from ..params import Param
from .base import MAX_RATIO, Plan, Schedule, Scores, check_cap, redistribute_to_mean, register_schedule


@register_schedule
class BlockInfluence(Schedule):
    name = "block-influence"
    label = "Block influence (MoDeGPT allocation)"
    summary = ("Each layer's share of the removal is a softmax of its negated block influence: layers that "
               "barely change the hidden state lose most. A lower temperature concentrates the removal.")
    needs_scores = True
    params = (
        Param("temperature", "float", 0.015, "softmax temperature eps; smaller = more uneven", minimum=1e-4,
              maximum=10.0),
        MAX_RATIO,
    )

    def check(self, target: float, params: dict) -> None:
        check_cap(target, params["max_ratio"])

    def build(self, target: float, num_layers: int, scores: Scores, params: dict) -> Plan:
        temperature, cap = params["temperature"], params["max_ratio"]
        bi = scores()
        weights = _softmax([-b / temperature for b in bi])
        ratios = redistribute_to_mean(weights, target, 0.0, cap)
        return Plan(self.name, target, ratios, scores=bi, options={"temperature": temperature, "max_ratio": cap})


def _softmax(x: list[float]) -> list[float]:
    m = max(x)
    e = [math.exp(v - m) for v in x]
    s = sum(e)
    return [v / s for v in e]
