"""``uniform``: every layer loses the target ratio."""
from __future__ import annotations

from .base import Plan, Schedule, Scores, register_schedule


@register_schedule
class Uniform(Schedule):
    name = "uniform"
    label = "Uniform"
    summary = "Every layer loses the same fraction: the baseline, and what most papers report."

    def build(self, target: float, num_layers: int, scores: Scores, params: dict) -> Plan:
        return Plan("uniform", target, [target] * num_layers)
