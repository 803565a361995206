"""``Recipe``: everything that decides a compression run, parsed and validated in one place.

The CLI, the UI, the shipped presets (assets/recipes) and saved folders (``slimlab.json``)
all go through ``Recipe.from_dict``/``Recipe.read``, and ``validate()`` refuses a bad recipe
without a model, so a wrong ratio costs milliseconds, not a model load. This module imports
neither torch nor the methods at import time (the method registry is read lazily).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from .calibration import CalibrationSpec, check_source
from .errors import ConfigError
from .params import DAMPINGS, DEFAULT_DAMPING
from .params import int_at_least as _int_at_least
from .params import known_keys as _known_keys
from .params import read_settings_file, resolve_params
from .schedules import Plan, check_ratio, get_schedule, resolve_schedule, split_schedule

RECIPE_VERSION = 2  # 1: the layouts before Recipe (saved slimlab.json, presets with slicing_base)


def current_versions() -> dict[str, str]:
    """The versions a produced recipe records (read from package metadata: no torch import)."""
    out = {}
    for package in ("slimlab", "torch", "transformers"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def _spec_of(cls: type, d: Any, what: str):
    """A recipe field's dataclass from its mapping; a non-mapping or an unknown key is a ConfigError."""
    if not isinstance(d, dict):
        raise ConfigError(f"recipe field '{what}' must be a mapping (got {d!r}).")
    return cls(**_known_keys(d, cls, what))


RECOVERY_KINDS = ("none", "lora", "full")
RECOVERY_GROUPS = ("attention", "mlp", "norms", "embeddings", "head")


@dataclass
class RecoverySpec:
    """Distillation after compression ("heal"): what is trained, for how long, on which text.

    ``kind``: ``lora`` (adapters on the linears of ``groups``, merged at the end, so the
    structure is unchanged) or ``full`` (the parameters of ``groups`` themselves). The run
    stops at ``steps`` optimizer steps or after ``minutes``, whichever comes first (None: that
    bound is off; at least one is set; only the step bound does the same work on every machine). The text
    is ``source`` (None: the calibration's) in ``nsamples`` windows of ``seqlen`` tokens, seeded by ``seed``
    like every sampled thing.

    Memory: each step's ``batch_size`` windows go through the student ``micro_batch`` at a time
    (gradients accumulated); the teacher's next-token distributions are stored once as their
    ``top_k`` most likely tokens plus the tail mass; ``checkpointing`` recomputes each layer's
    activations in the backward pass instead of keeping them."""

    kind: str = "none"
    steps: Optional[int] = 200
    minutes: Optional[float] = None
    lr: Optional[float] = None  # None: 5e-4 for LoRA, 5e-5 for full fine-tuning
    rank: int = 16  # LoRA rank (alpha = 2 * rank)
    groups: list = field(default_factory=lambda: ["attention", "mlp"])
    kl_temperature: float = 1.0
    hidden_weight: float = 0.0  # weight of the per-layer hidden-state match (only where shapes agree)
    seed: int = 0
    source: Optional[str] = None
    nsamples: int = 128
    seqlen: int = 512
    batch_size: int = 4
    micro_batch: int = 1
    top_k: int = 128
    checkpointing: bool = True

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (5e-4 if self.kind == "lora" else 5e-5)

    def to_dict(self) -> dict:
        return asdict(self) | {"groups": list(self.groups)}

    @classmethod
    def from_dict(cls, d: Any) -> "RecoverySpec":
        return _spec_of(cls, d, "recovery")

    @classmethod
    def from_fields(cls, values: dict, base: Optional["RecoverySpec"] = None) -> "RecoverySpec":
        """``base`` (default: the defaults) with the fields of ``values`` set from what a CLI flag, a UI
        control or a bench option gives: a number or its text; blank or ``none`` for an unset bound, learning
        rate or source; groups as a list or ``a+b``; a switch as a bool or on/off. Ranges are ``check()``'s."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"recovery has unknown field(s) {', '.join(unknown)}; it takes: {', '.join(names)}.")
        return replace(base or cls(), **{name: _recovery_field(name, value) for name, value in values.items()})

    def check(self) -> None:
        """Types and ranges; a known source (no data is read). Off (kind ``none``), only the kind is read."""
        if self.kind not in RECOVERY_KINDS:
            raise ConfigError(f"recovery kind must be one of {', '.join(RECOVERY_KINDS)} (got {self.kind!r}).")
        if not self.enabled:
            return
        for name, minimum in (("rank", 1), ("seed", 0), ("nsamples", 1), ("seqlen", 2), ("batch_size", 1),
                              ("micro_batch", 1), ("top_k", 1)) + ((("steps", 1),) if self.steps is not None else ()):
            _int_at_least(getattr(self, name), f"recovery {name}", minimum)
        if not isinstance(self.checkpointing, bool):
            raise ConfigError(f"recovery checkpointing must be true or false (got {self.checkpointing!r}).")
        if self.steps is None and self.minutes is None:
            raise ConfigError("recovery needs a bound: steps, minutes or both.")
        for name, value, low in (("minutes", self.minutes, 0.0), ("lr", self.lr, 0.0),
                                 ("kl_temperature", self.kl_temperature, 0.0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= low):
                raise ConfigError(f"recovery {name} must be a positive number (got {value!r}).")
        if isinstance(self.hidden_weight, bool) or not isinstance(self.hidden_weight, (int, float)) \
                or self.hidden_weight < 0:
            raise ConfigError(f"recovery hidden_weight must be a number >= 0 (got {self.hidden_weight!r}).")
        unknown = [g for g in self.groups if g not in RECOVERY_GROUPS] if isinstance(self.groups, list) else None
        if unknown is None or unknown or not self.groups:
            raise ConfigError(f"recovery groups must be a non-empty list of {', '.join(RECOVERY_GROUPS)} "
                              f"(got {self.groups!r}).")
        if self.source is not None:
            try:
                check_source(self.source)
            except ConfigError as exc:
                raise ConfigError(f"recovery source: {exc}") from None

    def label(self) -> str:
        budget = " / ".join(([f"{self.steps} steps"] if self.steps else []) +
                            ([f"{self.minutes:g} min"] if self.minutes else []))
        return f"{self.kind} heal {budget}"


_UNSETTABLE = ("steps", "minutes", "lr", "source")  # recovery fields whose None means "off" or "the default"
_WHOLE = ("steps", "rank", "seed", "nsamples", "seqlen", "batch_size", "micro_batch", "top_k")
_SWITCH = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}


def _recovery_field(name: str, value: Any) -> Any:
    """One RecoverySpec field from a number, a text or a list, as ``RecoverySpec.from_fields`` reads it."""
    text = value.strip() if isinstance(value, str) else value
    if name in _UNSETTABLE and (text is None or (isinstance(text, str) and text.lower() in ("", "none"))):
        return None
    if name == "groups":
        return [g.strip() for g in text.replace(",", "+").split("+") if g.strip()] if isinstance(text, str) \
            else list(text or [])
    if name in ("kind", "source"):
        return text
    if name == "checkpointing":
        switch = _SWITCH.get(str(text).lower()) if not isinstance(text, bool) else text
        if switch is None:
            raise ConfigError(f"recovery checkpointing must be on or off (got {value!r}).")
        return switch
    whole = name in _WHOLE
    try:
        number = float(text)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (whole and number != int(number)):
        wanted = ("a whole number" if whole else "a number") + (" or none" if name in _UNSETTABLE else "")
        raise ConfigError(f"recovery {name} must be {wanted} (got {value!r}).")
    return int(number) if whole else number


COMPENSATION_HALVES = ("mlp", "attention", "both")


@dataclass
class CompensationSpec:
    """Training-free low-rank compensation (EoRA-style, ``transforms.compensation``): each compressed
    half of ``halves`` gets a low-rank side branch fitted to its output error on the calibration data.
    Its size is a budget in parameters, ``share`` of each layer's (original) parameters for all its
    branches together, which the engine turns into a rank from the layer's shapes; or, instead, a
    fixed ``rank``. Both 0 turns it off. Its parameters count as added parameters."""

    rank: int = 0
    halves: str = "mlp"
    share: float = 0.0
    damping: str = DEFAULT_DAMPING  # the fit's ridge: chosen per half by GCV, or the fixed fraction

    @property
    def enabled(self) -> bool:
        return self.rank > 0 or self.share > 0

    @property
    def half_names(self) -> tuple[str, ...]:
        """The driver's half names (``attention``, ``mlp``) this spec compensates."""
        return ("attention", "mlp") if self.halves == "both" else (self.halves,)

    def to_dict(self) -> dict:
        """Without ``share`` when it is 0, so a rank-only recipe reads in a SlimLab from before shares."""
        return {k: v for k, v in asdict(self).items() if k != "share" or self.share}

    @classmethod
    def from_dict(cls, d: Any) -> "CompensationSpec":
        """A recipe from before ``damping`` was a field replays as it was made: with the fixed damping."""
        return _spec_of(cls, {"damping": "fixed"} | d if isinstance(d, dict) else d, "compensation")

    @classmethod
    def parse(cls, text: str) -> "CompensationSpec":
        """``SHARE[:HALVES]`` (the CLI's ``--compensation``), e.g. ``0.05`` or ``0.05:both``; ``0``: off."""
        share, _, halves = str(text).strip().partition(":")
        try:
            value = float(share)
        except ValueError:
            raise ConfigError(f"compensation takes SHARE[:{'|'.join(COMPENSATION_HALVES)}], a share of each "
                              f"layer's parameters such as 0.05 (got {text!r}).") from None
        spec = cls(share=value, halves=halves.strip() or cls.halves)
        spec.check()
        return spec

    def check(self) -> None:
        _int_at_least(self.rank, "compensation rank", 0)
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 <= self.share < 1:
            raise ConfigError(f"compensation share must be a number in [0, 1): a share of each layer's parameters "
                              f"(got {self.share!r}).")
        if self.rank and self.share:
            raise ConfigError("compensation takes a share or a rank, not both.")
        if self.halves not in COMPENSATION_HALVES:
            raise ConfigError(f"compensation halves must be one of {', '.join(COMPENSATION_HALVES)} "
                              f"(got {self.halves!r}).")
        if self.damping not in DAMPINGS:
            raise ConfigError(f"compensation damping must be one of {', '.join(DAMPINGS)} "
                              f"(got {self.damping!r}).")

    def label(self) -> str:
        size = f"{self.share:.1%}" if self.share else f"r{self.rank}"
        return f"EoRA {size} {self.halves}" + ("" if self.damping == DEFAULT_DAMPING else f" ({self.damping} damping)")


@dataclass
class VocabularySpec:
    """Vocabulary trimming, the run's last stage (``engine.vocabulary``): the model keeps ``keep`` tokens
    of its vocabulary (0: all; the embedding and head rows of the others go), the ones used most in
    ``tokens`` tokens of ``source`` text (None: the calibration's), drawn as calibration windows of
    ``seqlen`` seeded by ``seed``, then the tokenizer's earliest merges (``kept_token_ids(fill=True)``).
    The trimmed tokenizer still encodes any text, in more tokens where the text uses dropped ones.

    Why last: distillation compares the student's logits with the original's over the whole
    vocabulary, and trimming keeps the kept tokens' logits exactly, so it commutes with nothing
    before it and costs nothing after it."""

    keep: int = 0
    source: Optional[str] = None
    tokens: int = 600_000
    seqlen: int = 512
    seed: int = 42

    @property
    def enabled(self) -> bool:
        return self.keep > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "VocabularySpec":
        return _spec_of(cls, d, "vocabulary")

    def check(self) -> None:
        _int_at_least(self.keep, "vocabulary keep", 0)
        _int_at_least(self.tokens, "vocabulary tokens", 1)
        _int_at_least(self.seqlen, "vocabulary seqlen", 2)
        _int_at_least(self.seed, "vocabulary seed", 0)
        if self.source is not None:
            try:
                check_source(self.source)
            except ConfigError as exc:
                raise ConfigError(f"vocabulary source: {exc}") from None

    def text(self, calibration: CalibrationSpec) -> CalibrationSpec:
        """The counted text as calibration windows (``make_calibration`` draws them)."""
        return CalibrationSpec(self.source or calibration.source, -(-self.tokens // self.seqlen), self.seqlen,
                               self.seed, calibration.batch_size)

    def label(self) -> str:
        return f"vocabulary {self.keep:,}"


# what a preset file carries beside the recipe: its title, the quality measured when it was made
# ({"ppl", "dense_ppl", "chat_hits", ...}) and the answers to the example prompts ({"prompt", "dense", "compressed"})
PRESET_KEYS = ("name", "measured", "chat_examples")

_FIELD_TYPES = {"method_params": dict, "schedule_params": dict, "calibration": dict, "versions": dict, "recovery": dict,
                "compensation": dict, "vocabulary": dict, "model": str, "method": str, "schedule": str}


@dataclass
class Recipe:
    """A compression run: model spec, method + params, schedule + params (or an explicit plan),
    calibration, and the versions that produced it."""

    model: str = "demo"
    method: str = "slicegpt"
    method_params: dict = field(default_factory=dict)
    ratio: float = 0.25
    schedule: str = "uniform"
    schedule_params: dict = field(default_factory=dict)
    plan: Optional[Plan] = None  # an explicit per-layer plan; overrides the schedule
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    recovery: RecoverySpec = field(default_factory=RecoverySpec)  # distillation after compressing (off by default)
    compensation: CompensationSpec = field(default_factory=CompensationSpec)  # low-rank error correction (off)
    vocabulary: VocabularySpec = field(default_factory=VocabularySpec)  # trimmed tokens, the last stage (off)
    versions: dict = field(default_factory=current_versions)
    format_version: int = RECIPE_VERSION

    # --- checking -------------------------------------------------------------
    def validate(self) -> "Recipe":
        """A copy with params resolved to full dicts and every value checked; needs no model.

        Cheap checks run first, the method (which imports the method registry, hence torch) last.
        """
        try:
            ratio = check_ratio(self.ratio, "ratio")
        except (TypeError, ValueError):
            raise ConfigError(f"ratio must be a number in [0, 1) (got {self.ratio!r}).") from None
        self.calibration.check()
        self.recovery.check()
        self.compensation.check()
        self.vocabulary.check()
        if self.plan is None:
            schedule, schedule_params = resolve_schedule(self.schedule, ratio, self.schedule_params)
        else:  # the plan is what runs; the schedule is its provenance, so only its names are checked
            name, given = split_schedule(self.schedule, self.schedule_params)
            schedule = get_schedule(name)
            schedule_params = schedule.resolve_params(given)
            if not self.plan.ratios:
                raise ConfigError("plan has no per-layer ratios.")
            for i, r in enumerate(self.plan.ratios):
                check_ratio(r, f"plan ratio of layer {i}")
        method = _method(self.method)
        method_params = resolve_params("Method", method.name, method.params, self.method_params)
        return replace(self, ratio=ratio, schedule=schedule.name, schedule_params=schedule_params,
                       method_params=method_params)

    def check_layers(self, num_layers: int) -> None:
        """An explicit plan must have one ratio per layer of the model it is applied to."""
        if self.plan is not None and len(self.plan.ratios) != num_layers:
            raise ConfigError(f"The plan has {len(self.plan.ratios)} ratios but the model has {num_layers} layers.")

    # --- reading and writing --------------------------------------------------
    def to_dict(self) -> dict:
        return {"format_version": self.format_version, "model": self.model, "method": self.method,
                "method_params": dict(self.method_params), "ratio": self.ratio, "schedule": self.schedule,
                "schedule_params": dict(self.schedule_params),
                "plan": self.plan.to_dict() if self.plan is not None else None,
                "calibration": self.calibration.to_dict(), "recovery": self.recovery.to_dict(),
                "compensation": self.compensation.to_dict(),
                **({"vocabulary": self.vocabulary.to_dict()} if self.vocabulary.enabled else {}),
                "versions": dict(self.versions)}

    @classmethod
    def from_dict(cls, d: Any) -> "Recipe":
        """A recipe dict, a whole ``slimlab.json``, a shipped preset (its ``name``, ``measured`` quality
        and stored ``chat_examples`` are dropped: see ``PRESET_KEYS``), or the v1 layout (top-level
        ``slicing_base``); every layout comes out as the current one."""
        if not isinstance(d, dict):
            raise ConfigError(f"A recipe is a JSON/YAML mapping (got {type(d).__name__}).")
        d = dict(d["recipe"] if isinstance(d.get("recipe"), dict) else d)
        for key in PRESET_KEYS:
            d.pop(key, None)
        version = d.pop("format_version", 1)
        if not isinstance(version, int) or version > RECIPE_VERSION:
            raise ConfigError(f"Recipe format_version {version!r}: this SlimLab reads up to {RECIPE_VERSION}; "
                              "upgrade it.")
        slicing_base = d.pop("slicing_base", None)
        _known_keys(d, cls, "recipe")
        for key, kind in _FIELD_TYPES.items():
            if key in d and not isinstance(d[key], kind):
                raise ConfigError(f"recipe field '{key}' must be a {'mapping' if kind is dict else 'string'} "
                                  f"(got {d[key]!r}).")
        if slicing_base is not None:
            d["schedule_params"] = {"slicing_base": slicing_base} | d.get("schedule_params", {})
        searched = d.get("schedule_params") if d.get("schedule") == "searched" else None
        if isinstance(searched, dict) and "topk" in searched and "inputs" not in searched:
            # a searched recipe saved (resolved) before its level database had a choice of inputs: it was sequential
            d["schedule_params"] = searched | {"inputs": "sequential"}
        if "calibration" in d:
            d["calibration"] = CalibrationSpec.from_dict(d["calibration"])
        if "recovery" in d:
            d["recovery"] = RecoverySpec.from_dict(d["recovery"])
        if "compensation" in d:
            d["compensation"] = CompensationSpec.from_dict(d["compensation"])
        if "vocabulary" in d:
            d["vocabulary"] = VocabularySpec.from_dict(d["vocabulary"])
        if d.get("plan") is not None:
            d["plan"] = _plan(d["plan"])
        d.setdefault("versions", {})  # parsed, not produced here: no versions claimed
        return cls(**d)

    @classmethod
    def read(cls, path: "str | Path") -> "Recipe":
        """A recipe from a JSON or YAML file; every problem is a ConfigError naming the file."""
        data = read_settings_file(path, "Recipe file")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"Recipe file {path}: {exc}") from None

    def label(self) -> str:
        """Short human label, e.g. ``slicegpt 25% uniform (variant=shared)``: only non-default params."""
        name, schedule_params = split_schedule(self.schedule, self.schedule_params)
        extras = _non_default(self.method_params, _method(self.method).params)
        extras += _non_default(schedule_params, get_schedule(name).params)
        ratio = self.plan.target if self.plan is not None else self.ratio
        heal = f" + {self.recovery.label()}" if self.recovery.enabled else ""
        comp = f" + {self.compensation.label()}" if self.compensation.enabled else ""
        vocab = f" + {self.vocabulary.label()}" if self.vocabulary.enabled else ""
        return (f"{self.method} {ratio:.0%} {name}" + (f" ({', '.join(extras)})" if extras else "") + comp + heal
                + vocab)


def _method(name: Any):
    from .methods import get_method  # lazy: the methods import torch

    if not isinstance(name, str):
        raise ConfigError(f"method must be a method name (got {name!r}).")
    return get_method(name)


def _non_default(values: dict, params) -> list[str]:
    defaults = {p.name: p.default for p in params}
    return [f"{k}={v}" for k, v in values.items() if defaults.get(k) != v]


def _plan(d: Any) -> Plan:
    if not isinstance(d, dict):
        raise ConfigError(f"recipe field 'plan' must be a mapping with schedule, target and ratios (got {d!r}).")
    try:
        return Plan.from_dict(d)
    except KeyError as exc:
        raise ConfigError(f"plan has no '{exc.args[0]}'; a plan has schedule, target and ratios.") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"plan: target and ratios must be numbers ({exc}).") from None
