"""Typed parameters shared by methods and schedules, and the settings files they come from.

A method or a schedule declares its knobs as ``Param``s so that the CLI (``--param``,
``--schedule-param``, ``slimlab methods``), the UI (one control per param) and recipe
validation all read one schema instead of each hard-coding names and ranges.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

# how a least-squares refit is damped: chosen per fit by generalized cross-validation (transforms.ridge), or a
# fixed fraction. GCV is the default of every refit (FASP, MoDeGPT's down projection, compensation): on the
# demo model FASP 20% reached ppl 30.46 with it against 33.48 with the fixed 0.01 (-9%, 40x2048 windows,
# calibration 64x512 wikitext2:validation seed 42; bench/defaults.py, README "Damping from the data")
DAMPINGS = ("gcv", "fixed")
DEFAULT_DAMPING = "gcv"


@dataclass(frozen=True)
class Param:
    """One tunable knob, typed so a UI can render it without knowing its owner.

    A ``default`` of None marks an optional value whose absence means something (e.g.
    layer-redundancy's slicing base: "the target"); None then stays None.
    """

    name: str
    kind: str  # "float" | "int" | "bool" | "choice" | "str"
    default: Any
    help: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Optional[tuple] = None

    def validate(self, value: Any) -> Any:
        blank = isinstance(value, str) and not value.strip() and self.kind in ("int", "float")
        if (value is None or blank) and self.default is None:  # an optional number left blank (a UI text box)
            return None
        try:
            if self.kind == "float":
                value = float(value)
            elif self.kind == "int":
                value = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.name} takes a{'n integer' if self.kind == 'int' else ' number'} "
                              f"(got {value!r}).") from None
        if self.kind == "float" and math.isnan(value):
            raise ConfigError(f"{self.name} takes a number (got nan).")
        if self.kind == "bool":
            value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        elif self.kind == "choice" and value not in self.choices:
            raise ConfigError(f"{self.name} must be one of {', '.join(map(str, self.choices))} (got {value!r}).")
        elif self.kind == "str" and not isinstance(value, str):
            raise ConfigError(f"{self.name} takes a string (got {value!r}).")
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{self.name} must be in [{self.minimum}, {self.maximum}] (got {value}).")
        return value

    def to_dict(self) -> dict:
        """JSON-ready description (choices as a list) for listings and UI builders."""
        return self.__dict__ | {"choices": list(self.choices) if self.choices else None}


def resolve_params(owner_kind: str, owner: str, params: tuple[Param, ...], given: Optional[dict]) -> dict:
    """Every declared param, validated, with defaults for those not given.

    ``owner_kind``/``owner`` ("Method", "slicegpt") only make the error name what was wrong.
    """
    given = dict(given or {})
    known = {p.name: p for p in params}
    unknown = set(given) - set(known)
    if unknown:
        raise ConfigError(f"{owner_kind} '{owner}' has no parameter(s) {', '.join(sorted(unknown))}; "
                          f"it takes: {', '.join(known) or 'none'}.")
    return {name: p.validate(given.get(name, p.default)) for name, p in known.items()}


def schema(params: tuple[Param, ...]) -> list[dict]:
    return [p.to_dict() for p in params]


def read_settings_file(path: "str | Path", what: str) -> Any:
    """The data in a JSON or YAML (``.yaml``/``.yml``) file; ``what`` ("Recipe file") names it in errors."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} could not be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text file (JSON or YAML).") from None
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise ConfigError(f"{what} {path} is not valid {p.suffix[1:] or 'JSON'}: {exc}") from exc


def saved_fields(cls) -> list:
    """A recipe dataclass's fields that a file holds (not the ones marked ``saved: False``)."""
    return [f for f in fields(cls) if f.metadata.get("saved", True)]


def known_keys(data: dict, cls: type, what: str) -> dict:
    """``data`` when every key is a saved field of ``cls``, else a ConfigError naming the ones it takes."""
    names = [f.name for f in saved_fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{what} has unknown field(s) {', '.join(unknown)}; it takes: {', '.join(names)}.")
    return data


def int_at_least(value: Any, what: str, minimum: int = 1) -> int:
    """``value`` when it is an integer (not a bool) of at least ``minimum``, else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum} (got {value!r}).")
    return value
