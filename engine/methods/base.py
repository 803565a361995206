"""The method protocol and the one registry every method joins.

A method declares a typed parameter schema (the UI builds its controls from it), compresses
the layers of a ``Workspace`` one at a time through the sequential driver (never the whole
model at once, never the original), and describes what it did in a typed, versioned
``Structure`` that ``rebuild`` turns back into shapes when a saved folder is loaded.
Adding a method is one new file in this package (see docs/ADDING_A_METHOD.md).
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Optional

from torch import nn

from ..calibration import CalibrationSpec
from ..errors import ConfigError, UnsupportedArchitectureError
from ..models.adapters import Adapter
from ..workspace import Workspace
from ..params import Param, resolve_params, schema
from ..progress import Reporter
from ..schedules import Plan
from ..stats import LayerHooks, LayerSource, run_sequential


@dataclass
class Structure:
    """What ``rebuild`` needs to recreate a method's shapes on a fresh base model.

    Subclasses are dataclasses of JSON-ready fields; ``VERSION`` rises when a field's meaning
    changes, and a folder saved by a newer SlimLab is refused instead of misread."""

    VERSION: ClassVar[int] = 1
    # per-layer lists of integers (e.g. DISP-LLM's kept channels) that a saved folder keeps as integer tensors
    # in ``STRUCTURE_FILE`` beside slimlab.json instead of as JSON (``engine.compressed.format``)
    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        return {"version": self.VERSION} | asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Structure":
        version = int(data.get("version", 1))  # folders from before versioning are version 1
        if version > cls.VERSION:
            raise ConfigError(f"This structure is version {version}; this SlimLab reads up to {cls.VERSION}. Upgrade.")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class MethodOutput:
    """What a method returns; the engine adds accounting, timings and memory around it."""

    widths: dict[str, list[int]]  # per-layer widths actually applied, e.g. {"attn_in": [...]}
    structure: Structure
    params_added: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    plots: dict = field(default_factory=dict)  # data the UI may plot (spectra, scores)


# What a method can take from a transformer, named for ``Method.removes`` (the Learn panel draws them)
PARTS = {
    "residual": "residual-stream width (the hidden size every layer reads and writes)",
    "attention_qk": "query/key dimensions (what attention scores are computed in)",
    "attention_vo": "value/output dimensions of attention",
    "mlp": "MLP channels (intermediate neurons)",
    "layers": "whole layers",
}


class Method(ABC):
    """Subclasses set the class attributes and implement ``compress`` and ``rebuild``."""

    name: ClassVar[str]
    label: ClassVar[str]
    summary: ClassVar[str]  # one plain-language paragraph for the Learn panel
    paper: ClassVar[str] = ""  # the paper it implements (a link in the Learn panel)
    removes: ClassVar[tuple[str, ...]] = ()  # the PARTS it can shrink (the Learn panel's diagram)
    params: ClassVar[tuple[Param, ...]] = ()
    needs_calibration: ClassVar[bool] = True
    uses_plan: ClassVar[bool] = True  # False for methods that pick their own per-layer amounts
    # True: removes whole layers, the lowest ``plan.scores`` first when a plan ranks them (a searched plan does)
    removes_layers: ClassVar[bool] = False
    # True: rotates the residual stream's basis through every layer (SliceGPT), which needs each half's
    # output to be a linear map of its writer's (no norm after a half: ``Adapter.sandwich_norms``)
    rotates_residual: ClassVar[bool] = False
    structure_type: ClassVar[type[Structure]]

    def resolve_params(self, given: Optional[dict]) -> dict:
        return resolve_params("Method", self.name, self.params, given)

    @abstractmethod
    def compress(self, work: Workspace, calibration: Optional[CalibrationSpec], plan: Plan, params: dict,
                 progress: Reporter) -> MethodOutput:
        """Build ``work.model`` layer by layer (``run_sequential`` over ``work``, or ``work.open``/``close``)."""

    @abstractmethod
    def rebuild(self, model: nn.Module, adapter: Adapter, structure: Any) -> None:
        """Recreate the compressed shapes on a freshly built base model (weights come after)."""

    def plan_shapes(self, model: nn.Module, adapter: Adapter, plan: Plan, params: dict) -> bool:
        """Give ``model`` (a meta-device copy of the original: shapes, no data) the shapes ``plan`` would
        produce, so a front end can show the size a run will have before anything is computed (a choice
        that grows the model is flagged at once). Returns False when the method cannot tell before it runs."""
        return False

    def read_structure(self, data: dict) -> Structure:
        return self.structure_type.from_dict(data)

    def schema(self) -> list[dict]:
        return schema(self.params)


def timed_pass(work: Workspace, calibration: CalibrationSpec, hooks: LayerHooks, progress: Reporter, stage: str,
               label: str, source: Optional[LayerSource] = None) -> dict[str, float]:
    """Capture layer 0's calibration inputs and run ``hooks`` over ``work`` (or another ``source``, e.g. the
    read-only ``work.originals``) through the driver; returns the seconds of both stages (``label`` names
    the pass, and prefixes the capture's when ``source`` is given) for ``MethodOutput.stage_seconds``."""
    t = time.perf_counter()
    inputs = work.capture(calibration)
    stages = {"capture inputs" if source is None else f"{label}: capture inputs": time.perf_counter() - t}
    t = time.perf_counter()
    run_sequential(inputs, work.adapter, work if source is None else source, hooks, progress, stage)
    stages[label] = time.perf_counter() - t
    return stages


REGISTRY: dict[str, Method] = {}


def check_architecture(method: Method, adapter: Adapter) -> None:
    """Refuse, before anything runs, a method this architecture cannot carry, naming those it can."""
    if method.rotates_residual and adapter.sandwich_norms:
        works = ", ".join(name for name, m in available_methods().items() if not m.rotates_residual)
        raise UnsupportedArchitectureError(
            f"Method '{method.name}' does not run on {adapter.name}: a norm after each half (sandwich norms) "
            f"stops a rotation of the residual stream from passing through the layers. Methods that do: {works}.")


def register(method: "type[Method] | Method") -> "type[Method] | Method":
    """Add a method (a class, instantiated here, or a configured instance) under its name."""
    instance = method() if isinstance(method, type) else method
    if instance.name in REGISTRY:
        raise ConfigError(f"A method named '{instance.name}' is already registered "
                          f"({type(REGISTRY[instance.name]).__name__}); pick another name.")
    REGISTRY[instance.name] = instance
    return method


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


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
