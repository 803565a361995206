"""Recipes: one parser for flags, presets, downloads and saved folders; validation without a model."""
import json
from dataclasses import replace
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.recipes import RECIPE_VERSION, CalibrationSpec, Recipe, current_versions
from engine.schedules import Plan

PRESETS = sorted((Path(__file__).resolve().parents[1] / "assets" / "recipes").glob("*.json"))

V1_SLIMLAB_JSON = {  # what `slimlab compress --out` wrote before Recipe (engine v1)
    "format": 1, "method": "slicegpt", "widths": {"attention": [48, 48, 48]}, "structure": {},
    "recipe": {
        "model": "demo", "method": "slicegpt",
        "method_params": {"variant": "per-layer", "round_to": 8, "slice_head": False, "damp": 0.01},
        "ratio": 0.3, "schedule": "layer-redundancy",
        "plan": {"schedule": "layer-redundancy", "target": 0.3, "ratios": [0.1, 0.35, 0.45],
                 "scores": [1.0, 0.0, 0.5], "options": {"slicing_base": 0.1, "max_ratio": 0.9}},
        "calibration": {"source": "wikitext2:validation", "nsamples": 4, "seqlen": 32, "seed": 7},
    },
}


def test_defaults_are_the_cli_defaults_and_validate():
    recipe = Recipe().validate()
    assert (recipe.model, recipe.method, recipe.ratio, recipe.schedule) == ("demo", "slicegpt", 0.25, "uniform")
    assert recipe.method_params == {"variant": "per-layer", "round_to": 8, "slice_head": False, "damp": 0.01}
    assert recipe.calibration == CalibrationSpec("wikitext2:validation", 64, 512, 42, 8)
    assert recipe.format_version == RECIPE_VERSION
    assert set(Recipe().versions) == {"slimlab", "torch", "transformers"} == set(current_versions())


def test_round_trip_through_json_and_yaml(tmp_path):
    import yaml

    recipe = Recipe(model="org/model", method="fasp", method_params={"parts": "mlp"}, ratio=0.2,
                    schedule="block-influence", schedule_params={"temperature": 0.05},
                    plan=Plan("block-influence", 0.2, [0.1, 0.3], scores=[0.2, 0.1], options={"temperature": 0.05}),
                    calibration=CalibrationSpec("c4", 8, 128, 1, 2)).validate()
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe.to_dict()))
    assert Recipe.read(tmp_path / "r.yaml") == recipe
    assert recipe.validate() == recipe  # resolving twice changes nothing


def test_drawn_tokens_ride_along_but_are_never_saved_or_compared():
    """One calibration type: the recipe's description, and the same with its windows drawn."""
    spec = CalibrationSpec("c4", 2, 4, 1, 2)
    drawn = replace(spec, tokens=[[5, 6, 7, 8], [9, 10, 11, 12]])
    assert drawn == spec and drawn.to_dict() == spec.to_dict() == {
        "source": "c4", "nsamples": 2, "seqlen": 4, "seed": 1, "batch_size": 2}
    assert "tokens" not in repr(drawn)
    recipe = Recipe(calibration=drawn)
    assert "tokens" not in json.dumps(recipe.to_dict())
    with pytest.raises(TypeError):  # tokens are named, never taken for a positional field
        CalibrationSpec("c4", 2, 4, 1, 2, [[5, 6, 7, 8]])


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_shipped_preset_parses_and_validates(path):
    raw = json.loads(path.read_text())
    recipe = Recipe.read(path).validate()
    assert recipe.method == raw["method"] and recipe.ratio == raw["ratio"] and recipe.schedule == raw["schedule"]
    assert recipe.calibration.nsamples == raw["calibration"]["nsamples"]
    assert recipe.plan is None
    if "slicing_base" in raw:  # the v1 top-level field lands in the schedule's params
        assert recipe.schedule_params["slicing_base"] == raw["slicing_base"]
    assert recipe.versions == {}  # a parsed file claims no versions it does not state
    if recipe.recovery.enabled:  # the same work on any machine: a step count, never a time bound
        assert recipe.recovery.steps and recipe.recovery.minutes is None, path.name


def test_presets_are_there():
    assert {p.stem for p in PRESETS} >= {"slicegpt-25-shared", "slicegpt-25-per-layer", "slicegpt-25-layer-redundancy"}


def test_the_v1_slimlab_json_layout_parses(tmp_path):
    path = tmp_path / "slimlab.json"
    path.write_text(json.dumps(V1_SLIMLAB_JSON))
    recipe = Recipe.read(path).validate()
    assert recipe.plan == Plan.from_dict(V1_SLIMLAB_JSON["recipe"]["plan"])
    assert recipe.calibration == CalibrationSpec("wikitext2:validation", 4, 32, 7, 8)
    assert recipe.schedule == "layer-redundancy" and recipe.schedule_params == {"slicing_base": None, "max_ratio": 0.9}
    assert Recipe.from_dict(V1_SLIMLAB_JSON["recipe"]) == Recipe.read(path)  # the bare recipe and the whole file


def test_manual_short_form_becomes_a_param(tmp_path):
    ratios = tmp_path / "ratios.json"
    ratios.write_text("[0.1, 0.2]")
    recipe = Recipe(schedule=f"manual:{ratios}").validate()
    assert recipe.schedule == "manual" and recipe.schedule_params == {"file": str(ratios)}


def test_a_plan_must_match_the_layer_count():
    recipe = Recipe(plan=Plan("manual", 0.2, [0.1, 0.3])).validate()
    recipe.check_layers(2)
    with pytest.raises(ConfigError, match="The plan has 2 ratios but the model has 3 layers"):
        recipe.check_layers(3)


def test_label_names_only_what_differs_from_the_defaults():
    assert Recipe(method_params={"variant": "shared"}).validate().label() == "slicegpt 25% uniform (variant=shared)"
    assert (Recipe(schedule="layer-redundancy", schedule_params={"slicing_base": 0.15}).validate().label()
            == "slicegpt 25% layer-redundancy (slicing_base=0.15)")
    assert Recipe(method="fasp", ratio=0.2).label() == "fasp 20% uniform"


@pytest.mark.parametrize("data, match", [
    ({"ratio": 1.2}, r"ratio must be in \[0, 1\)"),
    ({"ratio": "lots"}, "ratio must be a number"),
    ({"method": "nope"}, "Unknown method 'nope'"),
    ({"schedule": "zigzag"}, "Unknown schedule 'zigzag'"),
    ({"method_params": {"variant": "diagonal"}}, "variant must be one of per-layer, shared"),
    ({"method_params": {"colour": 1}}, "Method 'slicegpt' has no parameter.*colour.*takes: variant"),
    ({"method_params": {"round_to": "eight"}}, "round_to takes an integer"),
    ({"schedule": "uniform", "schedule_params": {"slicing_base": 0.1}}, "Schedule 'uniform' has no parameter"),
    ({"schedule": "layer-redundancy", "slicing_base": 0.4}, "Slicing base 0.4 must not exceed the target 0.25"),
    ({"schedule": "manual"}, "manual:FILE"),
    ({"schedule": "manual:/no/such/file.json"}, "Schedule file not found: /no/such/file.json"),
    ({"calibration": {"nsamples": 0}}, "calibration nsamples must be an integer >= 1"),
    ({"calibration": {"seqlen": "long"}}, "calibration seqlen must be an integer"),
    ({"calibration": {"source": "tweets"}}, "calibration source: Unknown text source 'tweets'"),
    ({"calibration": {"source": "file:/no/such.txt"}}, "calibration source: file not found"),
    ({"calibration": {"nsample": 4}}, "calibration has unknown field.*nsample; it takes: source, nsamples"),
    ({"calibration": {"tokens": [[1, 2]]}}, "calibration has unknown field.*tokens; it takes: .*batch_size\\.$"),
    ({"ratoi": 0.2}, "recipe has unknown field.*ratoi"),
    ({"method_params": "variant=shared"}, "'method_params' must be a mapping"),
    ({"plan": {"ratios": [0.1]}}, "plan has no 'schedule'"),
    ({"plan": {"schedule": "manual", "target": 0.2, "ratios": [0.1, 1.5]}}, "plan ratio of layer 1 must be in"),
    ({"plan": {"schedule": "manual", "target": 0.2, "ratios": []}}, "plan has no per-layer ratios"),
    ({"format_version": 99}, "format_version 99: this SlimLab reads up to"),
])
def test_malformed_recipes_name_the_problem(data, match):
    with pytest.raises(ConfigError, match=match):
        Recipe.from_dict(data).validate()


def test_read_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json is not valid json"):
        Recipe.read(bad)
    bad.write_text(json.dumps({"method": "slicegpt", "ratoi": 0.2}))
    with pytest.raises(ConfigError, match=r"Recipe file .*bad.json: recipe has unknown field\(s\) ratoi"):
        Recipe.read(bad)
    bad.write_text("[0.1, 0.2]")
    with pytest.raises(ConfigError, match="bad.json: A recipe is a JSON/YAML mapping"):
        Recipe.read(bad)
    with pytest.raises(ConfigError, match="Recipe file not found"):
        Recipe.read(tmp_path / "missing.json")


def test_a_preset_with_measured_quality_and_chat_examples_parses(tmp_path):
    """A preset's ``measured`` figures and stored ``chat_examples`` travel beside the recipe; the recipe
    drops them (as it drops ``name``), and every other unknown key is still refused."""
    plain = {"method": "fasp", "ratio": 0.2, "calibration": {"source": "alpaca-chat", "nsamples": 8, "seqlen": 64},
             "recovery": {"kind": "lora", "steps": 10}}
    preset = plain | {"name": "demo 80%", "measured": {"ppl": 25.1, "dense_ppl": 20.4, "chat_hits": 15},
                      "chat_examples": [{"prompt": "Capital of France?", "dense": "Paris.", "compressed": "Paris"}]}
    path = tmp_path / "demo-80.json"
    path.write_text(json.dumps(preset))
    recipe = Recipe.read(path).validate()
    assert recipe == Recipe.from_dict(plain).validate()
    assert recipe.recovery.kind == "lora" and recipe.calibration.source == "alpaca-chat"
    with pytest.raises(ConfigError, match="unknown field.*measurd"):
        Recipe.from_dict(plain | {"measurd": {}})


DEMO_PRESETS = [p for p in PRESETS if p.stem.startswith("demo-")]


@pytest.mark.demo
@pytest.mark.parametrize("path", DEMO_PRESETS, ids=lambda p: p.stem)
def test_a_demo_preset_plans_the_size_its_measured_figures_claim(path, demo_lm, data_dir):
    """The size a shipped preset quotes is the size it replays to: ``planned_size`` (exact for its schedule,
    trimmed vocabulary counted in its text) agrees with ``measured.params_fraction`` to 0.1% of the dense
    parameters, and stays under the size its name promises."""
    from engine import block_influence, make_calibration
    from engine.planning import planned_size

    raw, recipe = json.loads(path.read_text()), Recipe.read(path)
    scores = lambda: block_influence(demo_lm, make_calibration(demo_lm, recipe.calibration, str(data_dir)))  # noqa: E731
    size = planned_size(demo_lm, recipe, scores, data_dir=str(data_dir))
    assert size is not None and size.exact
    assert size.fraction == pytest.approx(raw["measured"]["params_fraction"], abs=1e-3)
    assert size.fraction <= int(path.stem.split("-")[1]) / 100 + 1e-3
