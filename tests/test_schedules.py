"""Per-layer plans."""
import pytest

from engine.analysis.layer_scores import layer_redundancy
from engine.errors import ConfigError
from engine.schedules import build_plan, redistribute_to_mean


def test_uniform():
    assert build_plan("uniform", 0.25, 4).ratios == [0.25] * 4


def test_layer_redundancy_formula_keeps_the_mean():
    bi = [0.5, 0.1, 0.2, 0.4, 0.05]
    plan = build_plan("layer-redundancy", 0.3, 5, scores=lambda: bi, slicing_base=0.1)
    lr = layer_redundancy(bi)
    n_mean = sum(lr) / 5
    expected = [0.1 + (0.3 - 0.1) * n / n_mean for n in lr]
    assert plan.ratios == pytest.approx(expected)
    assert sum(plan.ratios) / 5 == pytest.approx(0.3)
    assert plan.ratios[4] == max(plan.ratios)  # lowest block influence = most redundant = sliced most
    assert plan.scores == pytest.approx(lr)


def test_slicing_base_equal_to_target_is_constant_slicing():
    plan = build_plan("layer-redundancy", 0.25, 3, scores=lambda: [0.3, 0.1, 0.2], slicing_base=0.25)
    assert plan.ratios == pytest.approx([0.25] * 3)


def test_clamping_redistributes_the_excess():
    ratios = redistribute_to_mean([0.0, 0.0, 0.0, 1.0], 0.5, 0.2, cap=0.8)
    assert max(ratios) <= 0.8 + 1e-12
    assert sum(ratios) / 4 == pytest.approx(0.5)


def test_block_influence_plan_prefers_low_influence_layers():
    plan = build_plan("block-influence", 0.3, 4, scores=lambda: [0.30, 0.02, 0.05, 0.20])
    assert sum(plan.ratios) / 4 == pytest.approx(0.3)
    assert plan.ratios[1] > plan.ratios[2] > plan.ratios[3] >= plan.ratios[0]


def test_errors():
    with pytest.raises(ConfigError, match="must not exceed"):
        build_plan("layer-redundancy", 0.2, 3, scores=lambda: [0.1, 0.2, 0.3], slicing_base=0.3)
    with pytest.raises(ConfigError, match="manual:FILE"):
        build_plan("manual", 0.2, 3)
