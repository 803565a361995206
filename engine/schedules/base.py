"""The schedule protocol, its registry, and ``Plan``: per-layer target ratios.

A schedule turns a target mean ratio into one ratio per layer. Like methods, schedules
register themselves with a typed parameter schema, so the CLI, the UI and recipes list and
validate them from one place. This package imports neither torch nor ``engine.methods``
(methods import it), so a recipe can be checked before anything heavy is loaded.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional

from ..errors import ConfigError
from ..params import Param, resolve_params, schema

Scores = Optional[Callable[[], list[float]]]  # lazily computed block influence per layer


@dataclass
class Plan:
    """Per-layer target ratios, produced by a schedule and editable by hand."""

    schedule: str
    target: float  # mean ratio asked for
    ratios: list[float]
    scores: Optional[list[float]] = None  # what the schedule ranked layers by (plotted in the UI)
    options: dict = field(default_factory=dict)  # "scores_label": what the scores mean, where the name does not say

    @property
    def scores_label(self) -> str:
        """What the scores are, for a chart's legend: the plan's own words, else the schedule's name
        ("layer-redundancy" ranks layers by layer redundancy)."""
        return self.options.get("scores_label") or self.schedule.replace("-", " ")

    def to_dict(self) -> dict:
        return {"schedule": self.schedule, "target": self.target, "ratios": list(self.ratios),
                "scores": list(self.scores) if self.scores is not None else None, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(d["schedule"], float(d["target"]), [float(r) for r in d["ratios"]], d.get("scores"),
                   dict(d.get("options") or {}))


def check_ratio(ratio: float, what: str = "ratio") -> float:
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in [0, 1) — the fraction to remove — got {ratio!r}.") from None
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise ConfigError(f"{what} must be in [0, 1) — the fraction to remove — got {ratio}.")
    return ratio


def check_cap(target: float, cap: float) -> None:
    if target > cap:
        raise ConfigError(f"Target {target} exceeds the per-layer maximum {cap}.")


def redistribute_to_mean(weights: list[float], target: float, base: float, cap: float) -> list[float]:
    """``r_i = base + c * w_i`` with c chosen so mean(r) = target, layers above ``cap`` clamped
    to it and their excess spread over the rest (water-filling)."""
    n = len(weights)
    check_cap(target, cap)
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


MAX_RATIO = Param("max_ratio", "float", 0.9, "no layer loses more than this fraction; the excess is spread "
                  "over the others", minimum=0.0, maximum=0.99)


class Schedule(ABC):
    """Subclasses set the class attributes and implement ``build``; ``check`` holds what can be
    refused without a model, so a recipe fails before loading one."""

    name: ClassVar[str]
    label: ClassVar[str]
    summary: ClassVar[str]  # one plain-language paragraph for listings and the Learn panel
    needs_scores: ClassVar[bool] = False  # True: ``build`` calls ``scores()`` (needs calibration data)
    needs_run: ClassVar[bool] = False  # True: the plan is made on the run itself (``build_for_run``)
    params: ClassVar[tuple[Param, ...]] = ()

    def resolve_params(self, given: Optional[dict]) -> dict:
        return resolve_params("Schedule", self.name, self.params, given)

    def check(self, target: float, params: dict) -> None:
        """Refuse a target/params combination that no model could satisfy (params resolved)."""

    @abstractmethod
    def build(self, target: float, num_layers: int, scores: Scores, params: dict) -> Plan:
        """The plan for ``num_layers`` layers; ``params`` is resolved and checked."""

    def build_for_run(self, target: float, run, params: dict) -> Plan:
        """The plan for one compression run (``engine.search.run.SearchRun``: model, method,
        calibration); only schedules with ``needs_run`` implement it."""
        raise NotImplementedError

    @classmethod
    def schema(cls) -> list[dict]:
        return schema(cls.params)


REGISTRY: dict[str, Schedule] = {}


def register_schedule(cls: type[Schedule]) -> type[Schedule]:
    """Class decorator; a second schedule with a taken name is refused, not silently swapped in."""
    if cls.name in REGISTRY:
        raise ConfigError(f"A schedule named '{cls.name}' is already registered "
                          f"({type(REGISTRY[cls.name]).__qualname__}); pick another name.")
    REGISTRY[cls.name] = cls()
    return cls


def get_schedule(name: str) -> Schedule:
    if name not in REGISTRY:
        raise ConfigError(f"Unknown schedule '{name}'. Available: {', '.join(REGISTRY)} (manual:FILE for a "
                          "file of per-layer ratios).")
    return REGISTRY[name]


def available_schedules() -> dict[str, Schedule]:
    return dict(REGISTRY)


def split_schedule(spec: str, params: Optional[dict] = None) -> tuple[str, dict]:
    """``"manual:FILE"`` (the CLI's and v1 recipes' short form) -> ``("manual", {"file": FILE})``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"Pick a schedule: {', '.join(REGISTRY)} (got {spec!r}).")
    name, _, arg = spec.partition(":")
    if name == "manual" and arg:
        return name, {"file": arg} | dict(params or {})
    return spec, dict(params or {})


def resolve_schedule(spec: str, target: float, params: Optional[dict] = None) -> tuple[Schedule, dict]:
    """The schedule and its full, checked params for ``target``; no model needed."""
    name, given = split_schedule(spec, params)
    schedule = get_schedule(name)
    resolved = schedule.resolve_params(given)
    schedule.check(target, resolved)
    return schedule, resolved


def build_plan(schedule: str, target: float, num_layers: int, scores: Scores = None,
               params: Optional[dict] = None, run=None) -> Plan:
    """``scores`` lazily computes block influence per layer (only schedules that need it call it);
    ``run`` is the compression run a searched schedule plans on (``compress()`` passes it)."""
    target = check_ratio(target, "target ratio")
    impl, resolved = resolve_schedule(schedule, target, params)
    if impl.needs_run and run is not None:
        return impl.build_for_run(target, run, resolved)
    if impl.needs_scores and scores is None:
        raise ConfigError(f"Schedule '{impl.name}' needs calibration data to score layers.")
    return impl.build(target, num_layers, scores, resolved)
