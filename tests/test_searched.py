"""The searched schedule on a tiny model: level database, KL fitness, the plan through compress()."""
from __future__ import annotations

import pytest
import torch

from engine import compress
from engine.errors import ConfigError
from engine.models import LoadedModel
from engine.models.adapters import adapter_for
from engine.progress import Reporter
from engine.recipes import CalibrationSpec
from engine.schedules import Plan, build_plan, get_schedule
from engine.search.database import DatabaseSpec, LevelDatabase, assemble
from engine.search.fitness import coarse_kl, _log_tail
from engine.search.run import SearchRun, open_database, search_plan
from engine.workspace import shell_copy

CALIB = CalibrationSpec("wikitext2:validation", nsamples=8, seqlen=32, seed=0, batch_size=4)


@pytest.fixture(scope="module")
def lm():
    from tiny import make_model

    model, tok = make_model("llama", num_hidden_layers=4)
    return LoadedModel(model=model, tokenizer=tok, spec="tiny-llama", adapter=adapter_for(model))


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory):
    """One level database for the module (the compress() test resumes it: same model, method, calibration)."""
    return tmp_path_factory.mktemp("levels") / "db"


def _params(db_dir, **over):
    base = {"level_step": 0.25, "max_level": 0.5, "generations": 3, "offspring": 4, "tokens": 128,
            "first_tokens": 64, "survivors": 2, "database": str(db_dir), "seed": 1}
    return get_schedule("searched").resolve_params(base | over)


def _run(lm, data_dir):
    from engine.calibration_tokens import make_calibration, token_drawer
    from engine.methods import get_method

    method_params = get_method("fasp").resolve_params({})
    return SearchRun(lm, "fasp", method_params, make_calibration(lm, CALIB, str(data_dir)), CALIB,
                     token_drawer(lm, str(data_dir)), Reporter())


def test_coarse_kl_is_the_full_kl_when_k_is_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    dense, cand = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    logp = torch.log_softmax(dense, -1)
    full = (logp.exp() * (logp - torch.log_softmax(cand, -1))).sum(-1)
    top = logp.topk(11, -1)
    assert torch.allclose(coarse_kl(cand, top.values, top.indices, _log_tail(top.values)), full, atol=1e-4)
    top3 = logp.topk(3, -1)
    coarse = coarse_kl(cand, top3.values, top3.indices, _log_tail(top3.values))
    assert (coarse <= full + 1e-5).all() and (coarse >= -1e-6).all()  # a lower bound, never negative
    assert coarse_kl(dense, top3.values, top3.indices, _log_tail(top3.values)).abs().max() < 1e-5


def test_sequential_database_layers_are_the_uniform_runs_layers(lm, data_dir, db_dir):
    run = _run(lm, data_dir)
    params = _params(db_dir, inputs="sequential")
    plan = search_plan(run, 0.25, params)
    db = open_database(run, params)
    assert db.missing() == [] and plan.options["levels_built"] == 2
    assert sorted(p.name for p in db_dir.iterdir()) == ["database.json", "level-01", "level-02"]
    params_table = db.params(lm)
    assert all(row[0] > row[1] > row[2] for row in params_table)
    tokens = run.calibration.tokens[:2]
    for level, ratio in ((1, 0.25), (2, 0.5)):
        uniform = compress(lm, "fasp", ratio, calibration=run.calibration, method_params=run.method_params)
        assembled = assemble(shell_copy(lm.model, lm.adapter).eval(), lm, db, (level,) * 4)
        with torch.no_grad():
            assert torch.allclose(assembled(tokens).logits, uniform.model(tokens).logits, atol=1e-5)
        assert sum(row[level] for row in params_table) == sum(
            p.numel() for layer in lm.adapter.layers(uniform.model) for p in layer.parameters())
    again = search_plan(run, 0.25, params)  # resumed from the database: nothing rebuilt, same plan (same seed)
    assert again.options["levels_built"] == 0 and again.ratios == plan.ratios
    with pytest.raises(ConfigError, match="built for another run"):
        LevelDatabase(db_dir, DatabaseSpec("other", 4, "fasp", {}, (0.0, 0.5), {}))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "opt", "gemma3"])
def test_dense_database_layers_are_each_fitted_to_the_originals_inputs(arch, data_dir, tmp_path):
    """With ``inputs="dense"`` (the default) layer i at a level is what the method makes of layer i alone, the
    layers before it left whole: it does not depend on how the others are compressed, so no plan is favoured.
    On every family the adapters claim (OPT's learned positions, Qwen2's biases, Gemma 3's sliding windows)."""
    from engine.search.database import build_level
    from tiny import make_model

    model, tok = make_model(arch)  # 3 layers (Gemma 3's: two sliding-window, one global)
    lm = LoadedModel(model=model, tokenizer=tok, spec=f"tiny-{arch}", adapter=adapter_for(model))
    run = _run(lm, data_dir)
    params = _params(tmp_path / "dense")
    assert params["inputs"] == "dense"
    db = open_database(run, params)
    build_level(lm, db, 1, run.calibration, Reporter())
    uniform = compress(lm, "fasp", 0.25, calibration=run.calibration, method_params=run.method_params)
    n = len(lm.adapter.layers(lm.model))
    for i in range(n):
        ratios = [0.25 if j == i else 0.0 for j in range(n)]
        alone = compress(lm, "fasp", 0.25, plan=Plan("manual", 0.25, ratios), calibration=run.calibration,
                         method_params=run.method_params)
        stored = db.layer(lm, i, 1).state_dict()
        assert stored.keys() == lm.adapter.layers(alone.model)[i].state_dict().keys()
        for name, tensor in lm.adapter.layers(alone.model)[i].state_dict().items():
            assert torch.allclose(stored[name], tensor, atol=1e-5), (i, name)
        in_sequence = lm.adapter.layers(uniform.model)[i].state_dict()
        differs = any(not torch.allclose(stored[k], in_sequence[k], atol=1e-5) for k in stored)
        assert differs == (i > 0)  # layer 0 reads the embeddings either way


def test_a_database_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "a-file").write_text("")
    spec = DatabaseSpec("m", 4, "fasp", {}, (0.0, 0.5), {})
    for root, why in ((tmp_path / ("word " * 100), "File name too long"), (tmp_path / "a-file" / "db", "Not a directory")):
        with pytest.raises(ConfigError, match=f"level database folder .* cannot be made: {why}"):
            LevelDatabase(root, spec)


def test_searched_plan_through_compress_keeps_the_budget(lm, data_dir, db_dir):
    params = _params(db_dir, generations=4, seed=3, inputs="sequential")  # the database the test above built
    result = compress(lm, "fasp", 0.25, schedule="searched", schedule_params=dict(params), calibration=CALIB,
                      data_dir=str(data_dir))
    plan = result.plan
    assert plan.schedule == "searched" and set(plan.ratios) <= {0.0, 0.25, 0.5}
    assert sum(plan.ratios) / 4 == pytest.approx(0.25)
    assert plan.options["seed"] == 3 and plan.options["generations_run"] == 4
    history = plan.options["history"]
    assert [h[0] for h in history] == list(range(5)) and history[0][1] >= 0
    assert plan.options["params_kept"] == plan.options["params_budget"] and plan.options["levels_built"] == 0
    from ui.handlers.compress import plan_view

    note = plan_view(plan).note
    assert f"in 4 generations (seed 3): KL to the original {history[0][1]:.4f}" in note
    assert plan.options["inputs"] == "sequential" and "compressed in sequence, on its own compressed layers" in note
    uniform = compress(lm, "fasp", 0.25, calibration=CALIB, data_dir=str(data_dir))
    assert result.accounting.params_total == uniform.accounting.params_total
    assert result.recipe.schedule_params["seed"] == 3 and result.recipe.plan.options["levels"] == [0.0, 0.25, 0.5]


def test_searched_needs_the_run_and_a_method_that_follows_plans(lm, data_dir, tmp_path):
    with pytest.raises(ConfigError, match="press Run"):
        build_plan("searched", 0.2, 4)
    with pytest.raises(ConfigError, match="deepest level"):
        build_plan("searched", 0.7, 4)
    with pytest.raises(ConfigError, match="deepest level 0.45"):  # the grid's last level, not max_level
        build_plan("searched", 0.48, 4, params={"level_step": 0.15, "max_level": 0.5})
    from engine.methods import Method, register, unregister

    class OwnAmounts(Method):  # neither follows a plan nor removes whole layers
        name, label, summary, uses_plan = "test-own-amounts", "own", "own", False

        def compress(self, work, calibration, plan, params, progress):
            raise AssertionError("never reached")

        def rebuild(self, model, adapter, structure):
            pass

    register(OwnAmounts)
    try:
        run = SearchRun(lm, "test-own-amounts", {}, None, CALIB, lambda spec: None, Reporter())
        with pytest.raises(ConfigError, match="picks its own"):
            search_plan(run, 0.25, _params(tmp_path / "d"))
    finally:
        unregister("test-own-amounts")


def test_the_ui_gets_the_searched_controls_from_its_schema():
    from ui.handlers import compress as handlers

    assert "searched" in [name for _label, name in handlers.schedule_choices()]
    names = [p["name"] for p in handlers.schedule_schemas()["searched"]]
    assert {"generations", "minutes", "seed", "tokens", "level_step", "max_level"} <= set(names)


def test_the_ui_runs_a_searched_plan(tiny_dirs, data_dir, tmp_path):
    from ui.handlers import compress as hc
    from ui.handlers import model as hm
    from ui.state import ModelCache, Session

    session = Session()
    hm.load(session, str(tiny_dirs["llama"]), cache=ModelCache(capacity=1))
    calib = ("wikitext2:validation", 8, 32, 0)
    params = {"level_step": 0.25, "max_level": 0.5, "generations": 2, "offspring": 3, "tokens": 64,
              "first_tokens": 32, "database": str(tmp_path / "db")}
    with pytest.raises(ConfigError, match="press Run"):  # Preview cannot search: the plan is made by Run
        hc.preview_plan(session, "searched", 0.25, params, *calib)
    view = hc.run(session, "fasp", {}, 0.25, "searched", params, *calib, [])
    assert "Searched over levels [0.0, 0.25, 0.5] in 2 generations" in view.plan.note
    assert session.result.recipe.plan.schedule == "searched" and session.result.recipe.schedule_params["generations"] == 2


def test_depth_search_removes_the_layers_whose_loss_hurts_least(lm, data_dir, tmp_path):
    """ShortGPT over keep/remove levels: with the last stage on every fitness window, the search's choice
    is the best single removal by KL (checked by scoring all of them), and compress() removes it."""
    from engine.search.fitness import score_candidates, dense_targets
    from engine.methods import get_method
    from engine.schedules import Plan
    from ui.handlers import compress as hc

    params = _params(tmp_path / "depth", generations=3, offspring=3, tokens=128, first_tokens=128)
    run = SearchRun(lm, "shortgpt", get_method("shortgpt").resolve_params({}), _run(lm, data_dir).calibration, CALIB,
                    _run(lm, data_dir).tokens_of, Reporter())
    plan = search_plan(run, 0.25, params)
    assert plan.scores.count(0.0) == 1 and plan.ratios == [0.25] * 4
    assert Plan.from_dict(plan.to_dict()).scores_label == "kept (1) / removed (0)"  # the plan says what 1 and 0 mean
    assert [t.name for t in hc.plan_view(plan).figure.data][-1] == "kept (1) / removed (0)"  # the chart's score line
    assert Plan("layer-redundancy", 0.2, [0.2], [0.5]).scores_label == "layer redundancy"  # else named by schedule
    db = open_database(run, params)
    assert db.spec.levels == (0.0, 1.0) and db.missing() == []
    from engine.search.run import fitness_tokens

    targets = dense_targets(lm, fitness_tokens(run, 128), 64, 2, Reporter())
    singles = [tuple(int(i == j) for i in range(4)) for j in range(4)]
    kl = score_candidates(lm, db, targets, singles, range(targets.tokens.shape[0]), 2, Reporter())
    assert plan.scores.index(0.0) == min(range(4), key=kl.__getitem__)
    result = compress(lm, "shortgpt", 0.25, schedule="searched", schedule_params=dict(params), calibration=CALIB,
                      data_dir=str(data_dir))
    assert result.structure.removed == [plan.scores.index(0.0)]


def test_a_searched_recipe_saved_before_the_inputs_choice_replays_its_sequential_database():
    from engine.recipes import Recipe

    old = {"model": "demo", "method": "fasp", "ratio": 0.3, "schedule": "searched",
           "schedule_params": {"level_step": 0.15, "topk": 64, "seed": 0}}
    assert Recipe.from_dict(old).schedule_params["inputs"] == "sequential"
    new = old | {"schedule_params": old["schedule_params"] | {"inputs": "dense"}}
    assert Recipe.from_dict(new).schedule_params["inputs"] == "dense"
    given = old | {"schedule_params": {"seed": 2}}  # not resolved: the defaults (dense) apply
    assert "inputs" not in Recipe.from_dict(given).schedule_params
    assert Recipe.from_dict(given).validate().schedule_params["inputs"] == "dense"
