"""Per-layer plans and the schedule registry."""
import json

import pytest

from engine.analysis.layer_scores import layer_redundancy
from engine.errors import ConfigError
from engine.schedules import (
    REGISTRY, Plan, Schedule, available_schedules, build_plan, get_schedule, redistribute_to_mean, register_schedule,
)


def test_uniform():
    assert build_plan("uniform", 0.25, 4).ratios == [0.25] * 4


def test_layer_redundancy_formula_keeps_the_mean():
    bi = [0.5, 0.1, 0.2, 0.4, 0.05]
    plan = build_plan("layer-redundancy", 0.3, 5, scores=lambda: bi, params={"slicing_base": 0.1})
    lr = layer_redundancy(bi)
    n_mean = sum(lr) / 5
    expected = [0.1 + (0.3 - 0.1) * n / n_mean for n in lr]
    assert plan.ratios == pytest.approx(expected)
    assert sum(plan.ratios) / 5 == pytest.approx(0.3)
    assert plan.ratios[4] == max(plan.ratios)  # lowest block influence = most redundant = sliced most
    assert plan.scores == pytest.approx(lr)
    assert plan.options == {"slicing_base": 0.1, "max_ratio": 0.9, "block_influence": bi}


def test_slicing_base_defaults_to_the_target_which_is_constant_slicing():
    scores = lambda: [0.3, 0.1, 0.2]  # noqa: E731
    plan = build_plan("layer-redundancy", 0.25, 3, scores=scores, params={"slicing_base": 0.25})
    assert plan.ratios == pytest.approx([0.25] * 3)
    default = build_plan("layer-redundancy", 0.25, 3, scores=scores)
    assert default.ratios == plan.ratios and default.options["slicing_base"] == 0.25


def test_clamping_redistributes_the_excess():
    ratios = redistribute_to_mean([0.0, 0.0, 0.0, 1.0], 0.5, 0.2, cap=0.8)
    assert max(ratios) <= 0.8 + 1e-12
    assert sum(ratios) / 4 == pytest.approx(0.5)


def test_block_influence_plan_prefers_low_influence_layers():
    plan = build_plan("block-influence", 0.3, 4, scores=lambda: [0.30, 0.02, 0.05, 0.20])
    assert sum(plan.ratios) / 4 == pytest.approx(0.3)
    assert plan.ratios[1] > plan.ratios[2] > plan.ratios[3] >= plan.ratios[0]
    assert plan.options == {"temperature": 0.015, "max_ratio": 0.9}
    hotter = build_plan("block-influence", 0.3, 4, scores=lambda: [0.30, 0.02, 0.05, 0.20],
                        params={"temperature": 1.0})
    assert max(hotter.ratios) - min(hotter.ratios) < max(plan.ratios) - min(plan.ratios)


def test_manual_from_a_file_both_spellings(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"ratios": [0.1, 0.2, 0.3]}))
    short = build_plan(f"manual:{path}", 0.5, 3)
    long = build_plan("manual", 0.5, 3, params={"file": str(path)})
    assert short == long == Plan("manual", pytest.approx(0.2), [0.1, 0.2, 0.3], options={"file": str(path)})
    with pytest.raises(ConfigError, match="has 3 ratios but the model has 4 layers"):
        build_plan(f"manual:{path}", 0.5, 4)


def test_errors():
    with pytest.raises(ConfigError, match="must not exceed"):
        build_plan("layer-redundancy", 0.2, 3, scores=lambda: [0.1, 0.2, 0.3], params={"slicing_base": 0.3})
    with pytest.raises(ConfigError, match="manual:FILE"):
        build_plan("manual", 0.2, 3)
    with pytest.raises(ConfigError, match="needs calibration data"):
        build_plan("block-influence", 0.2, 3)
    with pytest.raises(ConfigError, match="exceeds the per-layer maximum 0.5"):
        build_plan("block-influence", 0.6, 3, scores=lambda: [0.1, 0.2, 0.3], params={"max_ratio": 0.5})
    with pytest.raises(ConfigError, match="Schedule 'uniform' has no parameter.*temperature.*takes: none"):
        build_plan("uniform", 0.2, 3, params={"temperature": 0.1})
    with pytest.raises(ConfigError, match="Unknown schedule 'zigzag'. Available: uniform, layer-redundancy"):
        build_plan("zigzag", 0.2, 3)
    with pytest.raises(ConfigError, match=r"target ratio must be in \[0, 1\)"):
        build_plan("uniform", 1.2, 3)


def test_the_registry_lists_every_schedule_with_a_schema():
    schedules = available_schedules()
    assert list(schedules) == ["uniform", "layer-redundancy", "block-influence", "manual", "searched"]
    assert {n for n, s in schedules.items() if s.needs_run} == {"searched"}
    assert {n for n, s in schedules.items() if s.needs_scores} == {"layer-redundancy", "block-influence"}
    lr = {p["name"]: p for p in get_schedule("layer-redundancy").schema()}
    assert lr["slicing_base"]["default"] is None and lr["max_ratio"]["default"] == 0.9
    assert {p["name"]: p["default"] for p in get_schedule("block-influence").schema()} == {
        "temperature": 0.015, "max_ratio": 0.9}
    json.dumps([s.schema() for s in schedules.values()])  # JSON-ready for the CLI and the UI


def test_a_registered_schedule_is_usable_and_a_duplicate_name_is_refused():
    class Reverse(Schedule):
        name = "test-reverse"
        label = "Reverse"
        summary = "Later layers lose more."

        def build(self, target, num_layers, scores, params):
            weights = [i + 1 for i in range(num_layers)]
            return Plan(self.name, target, redistribute_to_mean(weights, target, 0.0, 0.9))

    register_schedule(Reverse)
    try:
        plan = build_plan("test-reverse", 0.3, 3)
        assert plan.ratios == pytest.approx([0.15, 0.3, 0.45])
        with pytest.raises(ConfigError, match="already registered"):
            register_schedule(type("Other", (Reverse,), {}))
        assert type(get_schedule("test-reverse")) is Reverse
        with pytest.raises(ConfigError, match="already registered"):
            register_schedule(type("Uniform2", (Reverse,), {"name": "uniform"}))
    finally:
        REGISTRY.pop("test-reverse")


def test_plan_round_trips():
    plan = Plan("block-influence", 0.3, [0.2, 0.4], scores=[0.1, 0.05], options={"temperature": 0.015})
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
