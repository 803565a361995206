"""Distillation recovery ("heal") on tiny models: it helps, merges exactly, cancels cleanly, repeats."""
import copy

import pytest
import torch

from engine import CalibrationSpec, Cancelled, CancelToken, compress, load_compressed, save_compressed
from engine.errors import ConfigError
from engine.models import LoadedModel
from engine.models.adapters import adapter_for
from engine.progress import Reporter
from engine.recipes import Recipe, RecoverySpec
from engine.recovery import mean_kl, recover
from engine.recovery import lora
from engine.transforms.value_heads import GatherLinear, ScatterLinear
from tiny import make_model

CAL = CalibrationSpec("wikitext2:validation", 16, 64, 0, 4)


@pytest.fixture(scope="module")
def teacher(data_dir):
    """A tiny llama whose logits are peaked enough (larger init) that the KL to it means something."""
    model, tok = make_model("llama", initializer_range=0.2)
    return LoadedModel(model, tok, "tiny", adapter_for(model))


@pytest.fixture(scope="module")
def held_out(teacher):
    from engine import make_calibration

    return make_calibration(teacher, CalibrationSpec("wikitext2:test", 8, 64, 99)).tokens


def _spec(kind: str, **kw) -> RecoverySpec:
    base = dict(kind=kind, steps=30, nsamples=32, seqlen=64, batch_size=4, source="wikitext2:validation",
                lr=3e-3 if kind == "lora" else 1e-3)
    return RecoverySpec(**(base | kw))


def _pruned(teacher, method: str = "fasp", **recovery):
    recipe = Recipe(model="tiny", method=method, ratio=0.5, calibration=CAL)
    if recovery:
        recipe.recovery = _spec(**recovery)
    return compress(teacher, recipe)


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_distillation_lowers_the_held_out_kl(teacher, held_out, kind):
    original = _state(teacher.model)
    before = mean_kl(_pruned(teacher).model, teacher.model, held_out)
    healed = _pruned(teacher, kind=kind)
    after = mean_kl(healed.model, teacher.model, held_out)
    assert after < 0.95 * before, (before, after)
    report = healed.plots["recovery"]
    assert report["steps"] == 30 and len(report["losses"]) == 30 and report["losses"][-1] < report["losses"][0]
    assert healed.recipe.recovery.kind == kind and "heal" in healed.recipe.label()
    assert healed.stage_seconds["recovery"] > 0
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in original.items())  # teacher untouched


def test_lora_merge_gives_the_adapted_logits(held_out):
    """Default init (the peaked teacher amplifies fp32 rounding to ~3e-5; in float64 the gap is 0)."""
    from engine.recovery.heal import _plain_tensors

    model, tok = make_model("llama")
    base = LoadedModel(model, tok, "tiny", adapter_for(model))
    result = _pruned(base)  # FASP prunes value dims: scatter/gather linears are left out
    _plain_tensors(result.model)
    wrapped, names, left_out = lora.attach(result.model, base.adapter, _spec("lora", groups=["attention", "mlp"]))
    assert left_out and all(".v_proj" in n or ".o_proj" in n for n in left_out)
    assert len(names) == 3 * 5  # q, k, gate, up, down in each of 3 layers
    kinds = {type(m) for m in result.model.modules()}
    assert ScatterLinear in kinds and GatherLinear in kinds
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lora.adapter_parameters(wrapped):
            p.normal_(0, 0.05)  # B starts at zero: give the adapters something to merge
    adapted = _logits(wrapped, held_out)
    merged = lora.merge(wrapped, held_out[:1])
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(_logits(merged, held_out), adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_cancel_mid_recovery_leaves_both_models_as_they_were(teacher, held_out, kind):
    original = _state(teacher.model)
    result = _pruned(teacher)
    compressed = _logits(result.model, held_out)
    token = CancelToken()

    def stop_at_step_3(event):
        if event.stage == "recovery" and event.step == 3:
            token.cancel()

    reporter = Reporter(callback=stop_at_step_3, cancel=token)
    tokens = held_out.repeat(2, 1)
    spec = _spec(kind, groups=["attention", "mlp", "norms", "embeddings"])
    with pytest.raises(Cancelled):
        recover(result.model, teacher.model, teacher.adapter, tokens, spec, reporter)
    assert torch.allclose(_logits(result.model, held_out), compressed, atol=0, rtol=0)  # as before recovery
    assert not any("lora" in n for n, _ in result.model.named_parameters())
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in original.items())
    # inside compress() a cancel discards the whole run; the original is still intact
    token2 = CancelToken()
    with pytest.raises(Cancelled):
        recipe = Recipe(model="tiny", method="fasp", ratio=0.5, calibration=CAL, recovery=spec)
        compress(teacher, recipe, cancel=token2,
                 progress=lambda e: token2.cancel() if e.stage == "recovery" and e.step == 2 else None)
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in original.items())


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_same_seed_same_loss_curve(teacher, kind):
    first = _pruned(teacher, kind=kind, steps=6).plots["recovery"]["losses"]
    assert first == _pruned(teacher, kind=kind, steps=6).plots["recovery"]["losses"]
    assert first != _pruned(teacher, kind=kind, steps=6, seed=1).plots["recovery"]["losses"]


def test_full_fine_tuning_keeps_a_tied_head_tied_and_saves(teacher, held_out, tmp_path):
    assert teacher.adapter.is_tied(teacher.model)
    embedding = teacher.adapter.token_embedding(teacher.model).weight.detach().clone()
    healed = _pruned(teacher, kind="full", steps=5, groups=["embeddings", "norms", "mlp"])
    assert healed.accounting.tied_embeddings and teacher.adapter.is_tied(healed.model)
    assert healed.accounting.params_total == _pruned(teacher).accounting.params_total
    trained = teacher.adapter.token_embedding(healed.model).weight
    assert not torch.equal(trained, embedding)
    assert torch.equal(teacher.adapter.token_embedding(teacher.model).weight, embedding)  # the original's is kept
    save_compressed(healed, tmp_path / "healed")
    back = load_compressed(tmp_path / "healed", device="cpu")
    assert torch.allclose(_logits(back.model, held_out), _logits(healed.model, held_out), atol=1e-5)
    assert back.meta["recipe"]["recovery"]["kind"] == "full"


def test_lora_result_saves_and_reloads(teacher, held_out, tmp_path):
    healed = _pruned(teacher, kind="lora", steps=4)
    save_compressed(healed, tmp_path / "lora")
    back = load_compressed(tmp_path / "lora", device="cpu")
    assert torch.allclose(_logits(back.model, held_out), _logits(healed.model, held_out), atol=1e-5)
    replay = Recipe.from_dict(back.meta)
    assert replay.recovery == healed.recipe.recovery


def test_hidden_matching_only_where_shapes_agree(teacher):
    pruned = _pruned(teacher, kind="full", steps=2, hidden_weight=1.0).plots["recovery"]
    assert pruned["hidden_matched"] and pruned["hidden"][0] > 0
    sliced = _pruned(teacher, method="slicegpt", kind="lora", steps=2, hidden_weight=1.0).plots["recovery"]
    assert not sliced["hidden_matched"] and sliced["hidden"] == [0.0, 0.0]


def test_recovery_spec_is_checked_and_round_trips():
    spec = RecoverySpec(kind="lora", steps=10, minutes=2.5, groups=["mlp"], source="alpaca-chat")
    recipe = Recipe(method="fasp", ratio=0.2, recovery=spec).validate()
    assert Recipe.from_dict(recipe.to_dict()).recovery == spec
    assert Recipe.from_dict({"method": "fasp"}).recovery.kind == "none"  # older recipes: no recovery
    for bad in (dict(kind="magic"), dict(kind="lora", steps=0), dict(kind="full", groups=["eyes"]),
                dict(kind="lora", minutes=-1), dict(kind="lora", source="nonsense"), dict(kind="lora", groups=[])):
        with pytest.raises(ConfigError, match="recovery"):
            Recipe(method="fasp", recovery=RecoverySpec(**bad)).validate()
    with pytest.raises(ConfigError, match="unknown field"):
        Recipe.from_dict({"method": "fasp", "recovery": {"kind": "lora", "epochs": 3}})


def test_a_recipe_with_recovery_replays_from_the_cli(tiny_dirs, data_dir, tmp_path):
    import json

    from engine.cli import main

    recipe = {"name": "tiny heal", "method": "fasp", "ratio": 0.3,
              "calibration": {"source": "alpaca-chat", "nsamples": 4, "seqlen": 32, "seed": 0},
              "recovery": {"kind": "lora", "steps": 2, "nsamples": 4, "seqlen": 32, "batch_size": 2}}
    path = tmp_path / "heal.json"
    path.write_text(json.dumps(recipe))
    out = tmp_path / "out"
    assert main(["compress", str(tiny_dirs["llama"]), "--recipe", str(path), "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "slimlab.json").read_text())
    assert meta["recipe"]["recovery"]["kind"] == "lora" and meta["recipe"]["recovery"]["steps"] == 2
    back = load_compressed(out, device="cpu")
    assert back.meta["recipe"]["calibration"]["source"] == "alpaca-chat"
