"""``searched`` (EvoPress): per-layer levels found by evolutionary search on the model itself.

Each layer is compressed once at every level of a grid (``level_step`` up to ``max_level``)
and stored; the search then assembles candidate models from the stored layers and keeps the
one whose next-token distribution is closest (KL) to the dense model's, under the parameter
budget of the target. It needs the model, the method and the calibration, so ``compress()``
builds it (``build_for_run``, handing over the run, which does the search: ``engine.search``).
"""
from __future__ import annotations

import math

from ..errors import ConfigError
from ..params import Param
from .base import Plan, Schedule, Scores, register_schedule


def level_grid(step: float, top: float) -> tuple[float, ...]:
    """0, step, 2 step ... up to ``top`` (rounded so 0.1 steps stay 0.1, 0.2, ...)."""
    count = int(math.floor(top / step + 1e-9))
    return tuple(round(k * step, 6) for k in range(count + 1))


# The defaults are the budget measured on the demo model (README, "Searched plans"): a database of 4 levels in
# 13 minutes and a search of 19 on 2 cores, which beat the uniform and block-influence plans there.
@register_schedule
class Searched(Schedule):
    name = "searched"
    label = "Searched (EvoPress)"
    summary = ("Searches the per-layer ratios instead of guessing them: every layer is compressed once at each "
               "level of a grid, then an evolutionary search tries plans with the same total parameters (one layer "
               "a level up, another a level down) and keeps the one whose predictions stay closest to the original "
               "model's (KL divergence on held-out calibration text). Slow to build, then the plan is reused.")
    needs_run = True
    params = (
        Param("level_step", "float", 0.15, "spacing of the ratio levels each layer may take", minimum=0.01,
              maximum=0.5),
        Param("max_level", "float", 0.6, "the deepest level (largest per-layer ratio)", minimum=0.05, maximum=0.95),
        Param("generations", "int", 20, "how many generations the search runs (0 with minutes: time only)",
              minimum=0, maximum=100000),
        Param("minutes", "float", None, "stop the search after this many minutes (blank: no time bound)",
              minimum=0.0, maximum=10000.0),
        Param("offspring", "int", 8, "children per generation", minimum=1, maximum=1024),
        Param("tokens", "int", 4096, "held-out calibration tokens the last selection stage scores on", minimum=16,
              maximum=10_000_000),
        Param("first_tokens", "int", 1024, "tokens of the first, cheap selection stage (>= tokens: one stage)",
              minimum=16, maximum=10_000_000),
        Param("survivors", "int", 2, "children that pass the first stage", minimum=1, maximum=1024),
        Param("topk", "int", 64, "dense log-probabilities kept per token for the KL (the rest is one bucket)",
              minimum=1, maximum=100000),
        Param("seed", "int", 0, "seed of the search (mutations and the stages' token samples)", minimum=0),
        Param("inputs", "choice", "dense", "what each stored layer is compressed on: the original's outputs of the "
              "layers before it (dense: the stored layers fit any plan alike, as in EvoPress) or the level's own "
              "compressed layers (sequential: the uniform plan is then favoured). A method that rotates the "
              "residual stream (SliceGPT) always builds sequentially", choices=("dense", "sequential")),
        Param("database", "str", None, "folder of the level database (blank: the cache, keyed by model, method, "
              "levels and calibration); an interrupted build resumes there"),
    )

    def check(self, target: float, params: dict) -> None:
        top = level_grid(params["level_step"], params["max_level"])[-1]
        if target > top + 1e-9:
            raise ConfigError(f"Target {target} is above the deepest level {top} (level_step {params['level_step']}, "
                              f"max_level {params['max_level']}); raise max_level.")
        if not params["generations"] and params["minutes"] is None:
            raise ConfigError("The search needs a bound: generations > 0, minutes, or both.")

    def build(self, target: float, num_layers: int, scores: Scores, params: dict) -> Plan:
        raise ConfigError("The searched plan is made on the model while compressing (it compresses every layer at "
                          "every level first): press Run, or use `slimlab compress --schedule searched`.")

    def build_for_run(self, target: float, run, params: dict) -> Plan:
        return run.search(target, params)  # ``engine.search.run.SearchRun``: this package imports no torch
