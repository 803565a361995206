"""Files the project ships in assets/: stylesheet, example chat prompts, recipe presets.

A preset is a recipe file in ``assets/recipes`` (``slimlab compress --recipe`` replays it too) with
a ``name``, and optionally the quality ``measured`` when it was made (``ppl``, ``dense_ppl``,
``chat_hits``/``chat_total``/``dense_chat_hits``, ``lambada``/``dense_lambada``, ``params_fraction``,
``seconds``, ``machine``) and ``chat_examples``: the dense and compressed answers to the example
prompts (``{"prompt", "dense", "compressed"}``). The ``demo-*`` presets (the measured best recipes
for the demo model) come first, the larger one first (demo-90 before demo-80).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

from engine import ConfigError, Recipe

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CHAT_EXAMPLE_KEYS = ("prompt", "dense", "compressed")
MEASURED_NUMBERS = ("params_fraction", "ppl", "dense_ppl", "chat_hits", "chat_total", "dense_chat_hits", "lambada",
                    "dense_lambada", "seconds")


def css_path() -> Path:
    return ASSETS / "style.css"


@lru_cache(maxsize=1)
def example_prompts() -> list[str]:
    return json.loads((ASSETS / "prompts.json").read_text())


@dataclass
class Preset:
    """A recipe with its title and, when it was measured, its quality and its stored chat answers."""

    name: str
    recipe: Recipe
    measured: dict = field(default_factory=dict)
    chat_examples: list[dict] = field(default_factory=list)
    path: Optional[Path] = None

    @classmethod
    def from_dict(cls, data: dict, name: str, path: Optional[Path] = None) -> "Preset":
        measured = data.get("measured") or {}
        examples = data.get("chat_examples") or []
        if not isinstance(measured, dict) or not all(
                isinstance(measured[k], (int, float)) and not isinstance(measured[k], bool)
                for k in MEASURED_NUMBERS if k in measured):
            raise ConfigError(f"'measured' must map {', '.join(MEASURED_NUMBERS)} to numbers (got {measured!r}).")
        if not isinstance(examples, list) or not all(
                isinstance(e, dict) and all(isinstance(e.get(k), str) for k in CHAT_EXAMPLE_KEYS) for e in examples):
            raise ConfigError(f"'chat_examples' must be a list of {{{', '.join(CHAT_EXAMPLE_KEYS)}}} texts.")
        return cls(str(data.get("name") or name), Recipe.from_dict(data), dict(measured), list(examples), path)

    @classmethod
    def read(cls, path: "str | Path") -> "Preset":
        """A preset file, or any recipe file (a download, a whole slimlab.json: nothing measured)."""
        if not path:
            raise ConfigError("No recipe file came with the upload; choose a .json or .yaml recipe.")
        path = Path(path)
        if path.suffix != ".json":
            return cls(path.stem, Recipe.read(path), path=path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ConfigError(f"A recipe is a JSON mapping (got {type(data).__name__}).")
            return cls.from_dict(data, path.stem, path)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Recipe file {path}: not valid JSON ({exc}).") from None
        except UnicodeDecodeError:
            raise ConfigError(f"Recipe file {path}: not a text file (JSON or YAML).") from None
        except (OSError, ConfigError) as exc:
            raise ConfigError(f"Recipe file {path}: {exc}") from None


def preset_named(name: Optional[str]) -> Optional[Preset]:
    """The shipped preset called ``name``; None when no name is picked (the controls stay as they are)."""
    if not name:
        return None
    found = all_presets().get(name)
    if found is None:
        raise ConfigError(f"There is no preset {str(name)[:60]!r}; pick one of: {', '.join(all_presets())}.")
    return found


def preset_order(path: Path) -> tuple:
    """demo-* files first, the larger fraction first (demo-90, demo-80, ...), then the others by name."""
    found = re.fullmatch(r"demo-(\d+)(.*)", path.stem)
    if found:
        return 0, -int(found.group(1)), found.group(2)
    return (0, 0, path.stem) if path.stem.startswith("demo-") else (1, 0, path.stem)


def load_presets(folder: Path) -> dict[str, Preset]:
    """Preset name -> preset, from every ``*.json`` in ``folder``, in the order the UI lists them."""
    presets = {}
    for path in sorted(folder.glob("*.json"), key=preset_order):
        preset = Preset.read(path)
        presets[preset.name] = preset
    return presets


@lru_cache(maxsize=1)
def all_presets() -> dict[str, Preset]:
    """The shipped presets (``assets/recipes``)."""
    return load_presets(ASSETS / "recipes")


def for_model(spec: str) -> Optional[Preset]:
    """The first shipped preset measured on the model ``spec`` (files named ``<spec>-*``, e.g. ``demo-90``
    for the demo), or None."""
    return next((p for p in all_presets().values() if p.path is not None and p.path.stem.startswith(f"{spec}-")),
                None)


def recipe_presets() -> dict[str, Recipe]:
    """Preset name -> recipe, from the files ``slimlab compress --recipe`` replays as well."""
    return {name: preset.recipe for name, preset in all_presets().items()}


def read_recipe(path: "str | Path") -> Recipe:
    """A recipe downloaded from the Export tab, or a whole slimlab.json (errors name the file)."""
    return Recipe.read(path)
