"""A run's size before it runs (``planned_size``) and the starter recipe, on tiny random models."""
from __future__ import annotations

import pytest

from engine import CalibrationSpec, ConfigError, Plan, Recipe, compress, load_model, planned_size, starter_recipe

CALIB = CalibrationSpec(nsamples=4, seqlen=32)
CASES = [("slicegpt", {}), ("slicegpt", {"variant": "shared"}), ("slicegpt", {"slice_head": True}), ("fasp", {}),
         ("fasp", {"parts": "value"}), ("wanda-sp", {"parts": "mlp"}), ("shortgpt", {}),
         ("olica", {"calibrated_layers": 2, "calibration_rank": 0.05}), ("prunenet", {"episodes": 2}),
         ("dotresize", {"variant": "shared"})]


@pytest.fixture(scope="module")
def models(tiny_dirs):
    """Tied RMSNorm (llama), untied with biases (qwen2), LayerNorm with a head bias after fusion (opt), sandwich
    norms (gemma3, where SliceGPT is refused: tests/test_gemma3.py)."""
    return {arch: load_model(str(tiny_dirs[arch]), device="cpu") for arch in ("llama", "qwen2", "opt", "gemma3")}


@pytest.mark.parametrize("arch,method,params", [(arch, method, params) for arch in ("llama", "qwen2", "opt", "gemma3")
                                               for method, params in CASES
                                               if arch != "gemma3" or method not in ("slicegpt", "dotresize")])
def test_planned_size_is_the_size_compress_gives(models, data_dir, arch, method, params):
    lm = models[arch]
    recipe = Recipe(model=lm.spec, method=method, method_params=params, ratio=0.3, calibration=CALIB)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    size = planned_size(lm, recipe)
    assert all(v.device.type != "meta" for v in lm.model.state_dict().values())  # the original is untouched
    assert all(before[k].equal(v) for k, v in lm.model.state_dict().items())
    result = compress(lm, recipe, data_dir=str(data_dir))
    assert size.exact
    assert size.planned.params_total == result.accounting.params_total
    assert size.original.params_total == result.original.params_total
    assert size.grows == result.bigger_than_original


def test_a_light_per_layer_slicing_of_a_tied_model_is_flagged_as_growing(models):
    lm = models["llama"]
    size = planned_size(lm, Recipe(method="slicegpt", ratio=0.05))
    assert size.grows and size.fraction > 1  # the untied head and the shortcuts outweigh 5% of the widths
    assert not planned_size(lm, Recipe(method="slicegpt", ratio=0.05, method_params={"variant": "shared"})).grows


def test_score_driven_plans_are_sized_as_uniform_until_scores_exist(models):
    lm = models["llama"]
    recipe = Recipe(method="fasp", ratio=0.3, schedule="layer-redundancy")
    assert not planned_size(lm, recipe).exact
    assert planned_size(lm, recipe, scores=lambda: [0.1, 0.5, 0.2]).exact
    searched = planned_size(lm, Recipe(method="fasp", ratio=0.3, schedule="searched"))  # planned on the run itself
    uniform = planned_size(lm, Recipe(method="fasp", ratio=0.3))
    assert not searched.exact and searched.planned.params_total == uniform.planned.params_total


def test_planned_size_refuses_what_compress_refuses(models):
    lm = models["llama"]
    with pytest.raises(ConfigError, match="remove all 3 layers"):
        planned_size(lm, Recipe(method="shortgpt", ratio=0.9))
    with pytest.raises(ConfigError, match="3 layers"):
        planned_size(lm, Recipe(method="fasp", plan=Plan("manual", 0.2, [0.2, 0.2])))


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_the_starter_recipe_shrinks_to_about_nine_tenths(models, arch):
    lm = models[arch]
    recipe = starter_recipe(lm)
    size = planned_size(lm, recipe)
    assert recipe.method == "fasp" and 0 < recipe.ratio <= 0.5
    assert 0.85 <= size.fraction <= 0.95  # tiny widths round in coarse steps of 8
    assert recipe.calibration.source == "wikitext2:validation+alpaca-chat"  # the tiny tokenizers have a chat template


def test_the_starter_recipe_fits_a_short_context(tmp_path):
    from tiny import save_model_dir

    lm = load_model(str(save_model_dir(tmp_path / "short", "llama", max_position_embeddings=128)), device="cpu")
    recipe = starter_recipe(lm)
    assert recipe.calibration.seqlen == 128 and recipe.recovery.seqlen == 128  # the defaults ask 512
    assert CalibrationSpec().seqlen == 512
