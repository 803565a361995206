"""``layer-redundancy`` (dynamic slicing, Dumitru et al.): ``FS_i = SB + (SP - SB) n_i / mean(n)``
with n the normalised redundancy and slicing base SB <= target SP; clamped at ``max_ratio``
with the excess redistributed, so the mean stays the target."""
from __future__ import annotations

from ..errors import ConfigError
from ..params import Param
from .base import MAX_RATIO, Plan, Schedule, Scores, check_cap, redistribute_to_mean, register_schedule


@register_schedule
class LayerRedundancy(Schedule):
    name = "layer-redundancy"
    label = "Layer redundancy (dynamic slicing)"
    summary = ("Layers that change the hidden state least (most redundant on calibration text) lose more, the "
               "others less; the slicing base is the least any layer loses and the mean stays the target.")
    needs_scores = True
    params = (
        Param("slicing_base", "float", None, "the smallest per-layer ratio SB (default: the target, i.e. "
              "uniform)", minimum=0.0, maximum=0.99),
        MAX_RATIO,
    )

    @staticmethod
    def base(target: float, params: dict) -> float:
        return target if params["slicing_base"] is None else params["slicing_base"]

    def check(self, target: float, params: dict) -> None:
        base = self.base(target, params)
        if base > target:
            raise ConfigError(f"Slicing base {base} must not exceed the target {target}.")
        check_cap(target, params["max_ratio"])

    def build(self, target: float, num_layers: int, scores: Scores, params: dict) -> Plan:
        from ..analysis.layer_scores import layer_redundancy  # lazy: analysis imports torch

        bi = scores()
        base, cap = self.base(target, params), params["max_ratio"]
        lr = layer_redundancy(bi)
        ratios = redistribute_to_mean(lr, target, base, cap)
        return Plan(self.name, target, ratios, scores=lr, options={"slicing_base": base, "max_ratio": cap,
                                                                   "block_influence": bi})
