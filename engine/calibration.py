"""``CalibrationSpec``: which text calibrates a run, the one type recipes, methods and analyses share.

A recipe holds the description (source, sample count, length, seed, batch size);
``engine.calibration_tokens.make_calibration`` returns the same type with the drawn token windows in
``tokens``. It sits below both ``engine.recipes`` and ``engine.methods`` (the recipe validates
methods, the methods read calibrations), and like the recipe it imports neither torch nor the
data stack at import time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError
from .params import int_at_least, known_keys, saved_fields

MAX_CALIBRATION_TOKENS = 100_000_000  # ~400x the papers' 128 x 2048: a typo, not a plan

@dataclass
class CalibrationSpec:
    """Which text calibrates a run, and how much: part of every recipe and saved model.

    ``make_calibration`` returns the same spec with ``tokens`` filled in (the drawn windows,
    ``[nsamples, seqlen]`` ids), which is what methods and analyses read; ``tokens`` is never
    saved, compared or printed, so a recipe stays a small description of the run."""

    source: str = "wikitext2:validation"
    nsamples: int = 64
    seqlen: int = 512
    seed: int = 42
    batch_size: int = 8
    tokens: Any = field(default=None, repr=False, compare=False, kw_only=True, metadata={"saved": False})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in saved_fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "CalibrationSpec":
        return cls(**known_keys(d, cls, "calibration"))

    def check(self) -> None:
        """Types and ranges, and a known text source."""
        for name, minimum in (("nsamples", 1), ("seqlen", 2), ("seed", 0), ("batch_size", 1)):
            int_at_least(getattr(self, name), f"calibration {name}", minimum)
        if self.nsamples * self.seqlen > MAX_CALIBRATION_TOKENS:
            raise ConfigError(f"calibration of {self.nsamples} x {self.seqlen} = {self.nsamples * self.seqlen:,} "
                              f"tokens is more than {MAX_CALIBRATION_TOKENS:,}; the papers calibrate on 128 x 2048.")
        try:
            check_source(self.source)
        except ConfigError as exc:
            raise ConfigError(f"calibration source: {exc}") from None


def check_source(spec: Any) -> None:
    """A known text source name (``wikitext2:test``, ``file:PATH``: the file must exist); no data is read."""
    from .data.sources import mixture_parts, parse_source  # lazy: engine.data pulls in the model stack

    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"expected a text source name (got {spec!r}).")
    for part in mixture_parts(spec):
        try:
            src = parse_source(part)
        except DataError as exc:
            raise ConfigError(str(exc)) from None
        if src.path is not None and not Path(src.path).is_file():
            raise ConfigError(f"file not found: {src.path}")
