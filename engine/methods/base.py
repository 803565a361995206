"""The method protocol and the one registry every method joins.

A method declares a typed parameter schema (the UI builds its controls from it), compresses
a *copy* of a model, and knows how to rebuild its structure on a fresh base model so the
saved format can be reloaded. Adding a method is one new file in this package.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..models.adapters import Adapter
from ..progress import Reporter


@dataclass(frozen=True)
class Param:
    """One tunable knob of a method, typed so a UI can render it without knowing the method."""

    name: str
    kind: str  # "float" | "int" | "bool" | "choice" | "str"
    default: Any
    help: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Optional[tuple] = None

    def validate(self, value: Any) -> Any:
        if self.kind == "float":
            value = float(value)
        elif self.kind == "int":
            value = int(value)
        elif self.kind == "bool":
            value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        elif self.kind == "choice" and value not in self.choices:
            raise ConfigError(f"{self.name} must be one of {', '.join(map(str, self.choices))} (got {value!r}).")
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{self.name} must be in [{self.minimum}, {self.maximum}] (got {value}).")
        return value


@dataclass
class Calibration:
    """Calibration batch plus its provenance (part of every recipe and saved model)."""

    source: str
    nsamples: int
    seqlen: int
    seed: int
    tokens: torch.Tensor  # [nsamples, seqlen] token ids
    batch_size: int = 8

    def describe(self) -> dict:
        return {"source": self.source, "nsamples": self.nsamples, "seqlen": self.seqlen, "seed": self.seed}


@dataclass
class Plan:
    """Per-layer target ratios, produced by a schedule and editable by hand."""

    schedule: str
    target: float  # mean ratio asked for
    ratios: list[float]
    scores: Optional[list[float]] = None  # what the schedule ranked layers by (plotted in the UI)
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schedule": self.schedule, "target": self.target, "ratios": list(self.ratios),
                "scores": list(self.scores) if self.scores is not None else None, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(d["schedule"], float(d["target"]), [float(r) for r in d["ratios"]], d.get("scores"),
                   dict(d.get("options") or {}))


@dataclass
class MethodOutput:
    """What a method returns; the engine adds accounting, timings and memory around it."""

    widths: dict[str, list[int]]  # per-layer widths actually applied, e.g. {"attn_in": [...]}
    structure: dict  # everything ``rebuild`` needs to recreate the shapes on a fresh model
    params_added: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    plots: dict = field(default_factory=dict)  # data the UI may plot (spectra, scores)


class Method:
    """Base class: subclasses set the class attributes and implement compress/rebuild."""

    name: ClassVar[str]
    label: ClassVar[str]
    summary: ClassVar[str]  # one plain-language paragraph for the Learn panel
    params: ClassVar[tuple[Param, ...]] = ()
    needs_calibration: ClassVar[bool] = True
    uses_plan: ClassVar[bool] = True  # False for methods that pick their own per-layer amounts

    def resolve_params(self, given: Optional[dict]) -> dict:
        given = dict(given or {})
        known = {p.name: p for p in self.params}
        unknown = set(given) - set(known)
        if unknown:
            raise ConfigError(f"Method '{self.name}' has no parameter(s) {', '.join(sorted(unknown))}; "
                              f"it takes: {', '.join(known) or 'none'}.")
        return {name: p.validate(given.get(name, p.default)) for name, p in known.items()}

    def compress(self, model: nn.Module, adapter: Adapter, calibration: Optional[Calibration], plan: Plan,
                 params: dict, progress: Reporter) -> MethodOutput:
        raise NotImplementedError

    def rebuild(self, model: nn.Module, adapter: Adapter, structure: dict) -> None:
        """Recreate the compressed shapes on a freshly built base model (weights come after)."""
        raise NotImplementedError

    @classmethod
    def schema(cls) -> list[dict]:
        return [p.__dict__ | {"choices": list(p.choices) if p.choices else None} for p in cls.params]


REGISTRY: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    from . import load_all

    load_all()
    if name not in REGISTRY:
        raise ConfigError(f"Unknown method '{name}'. Available: {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]


def available_methods() -> dict[str, Method]:
    from . import load_all

    load_all()
    return dict(sorted(REGISTRY.items()))
