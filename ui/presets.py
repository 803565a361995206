"""Files the project ships in assets/: stylesheet, example chat prompts, recipe presets."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from engine import Recipe

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def css_path() -> Path:
    return ASSETS / "style.css"


@lru_cache(maxsize=1)
def example_prompts() -> list[str]:
    return json.loads((ASSETS / "prompts.json").read_text())


@lru_cache(maxsize=1)
def recipe_presets() -> dict[str, Recipe]:
    """Preset name -> recipe, from the files ``slimlab compress --recipe`` replays as well."""
    presets = {}
    for path in sorted((ASSETS / "recipes").glob("*.json")):
        data = json.loads(path.read_text())
        presets[data.get("name", path.stem)] = Recipe.from_dict(data)
    return presets


def read_recipe(path: "str | Path") -> Recipe:
    """A recipe downloaded from the Export tab, or a whole slimlab.json (errors name the file)."""
    return Recipe.read(path)
