"""Files the project ships in assets/: stylesheet, example chat prompts, recipe presets."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from engine.errors import ConfigError

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def css_path() -> Path:
    return ASSETS / "style.css"


@lru_cache(maxsize=1)
def example_prompts() -> list[str]:
    return json.loads((ASSETS / "prompts.json").read_text())


@lru_cache(maxsize=1)
def recipe_presets() -> dict[str, dict]:
    """Preset name -> recipe (method, method_params, ratio, schedule, slicing_base, calibration)."""
    presets = {}
    for path in sorted((ASSETS / "recipes").glob("*.json")):
        recipe = json.loads(path.read_text())
        presets[recipe.pop("name", path.stem)] = recipe
    return presets


def read_recipe(path: "str | Path") -> dict:
    """A recipe JSON downloaded from the Export tab, or a whole slimlab.json."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Could not read a recipe from '{Path(path).name}': {exc}") from None
    data = data.get("recipe", data)
    if "method" not in data:
        raise ConfigError(f"'{Path(path).name}' is not a SlimLab recipe (no 'method').")
    return data
