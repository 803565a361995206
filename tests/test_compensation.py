"""Training-free low-rank compensation (EoRA-style) of compressed halves, on tiny random models:
the fit is the best of its rank and exact at full rank, it lowers the held-out error, it saves and
reloads, it is counted, it leaves the original and rank-0 runs alone, and it refuses what it cannot do."""
from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import replace

import pytest
import torch

from engine import CalibrationSpec, compress, load_compressed, save_compressed
from engine.errors import ConfigError
from engine.models import LoadedModel
from engine.models.adapters import adapter_for
from engine.models.side_branches import side_branches
from engine.progress import Reporter
from engine.recipes import CalibrationSpec, CompensationSpec, Recipe
from engine.stats import LayerHooks, ModelLayers, capture_layer_inputs, run_sequential
from engine.transforms.compensation import DAMP, ErrorStats, fit_low_rank, planned_params, rank_for_share

ARCHS = ("llama", "qwen2", "opt", "gemma3")


def _tokens(vocab: int, n: int, seqlen: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _lm(tiny, arch: str) -> LoadedModel:
    model, tok = tiny(arch)
    return LoadedModel(model, tok, "tiny", adapter_for(model))


def _calibration(lm: LoadedModel, n: int = 16):

    return CalibrationSpec("random", n, 64, 0, 4, tokens=_tokens(lm.model.config.vocab_size, n))


def _compressed(lm, rank: int = 0, halves: str = "mlp", method: str = "fasp", ratio: float = 0.4, **params):
    spec = CompensationSpec(rank, halves)
    return compress(lm, method, ratio, calibration=_calibration(lm), method_params=params, compensation=spec)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _held_out_error(result, lm) -> float:
    ids = _tokens(lm.model.config.vocab_size, 8, seed=1)
    return float((_logits(result.model, ids) - _logits(lm.model, ids)).square().mean())


# --- the fit ----------------------------------------------------------------------------------------------------------
def _data(n: int, d_in: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, 2, d_in, dtype=torch.float64)  # badly scaled channels, as in an LLM
    return torch.randn(n, d_in, generator=g, dtype=torch.float64) * scales


@pytest.mark.parametrize("d_in,d_out", [(24, 16), (16, 24)])
def test_full_rank_fit_removes_a_linear_error_exactly(d_in, d_out):
    x = _data(400, d_in)
    w = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    e = x @ w.T
    fit = fit_low_rank(x.T @ x, x.T @ e, min(d_in, d_out), damp=0.0, energy=float(e.square().sum()))
    assert fit.down.shape == (min(d_in, d_out), d_in) and fit.up.shape == (d_out, min(d_in, d_out))
    torch.testing.assert_close(fit.up @ fit.down, w, rtol=1e-9, atol=1e-9)
    assert fit.remaining < 1e-12  # from the statistics: cancellation leaves ~1e-16


def test_a_low_rank_fit_is_the_best_of_its_rank():
    """Reduced-rank regression: the optimum of rank r projects the least-squares fit onto its top-r
    right singular directions; the fit matches it, and its ``remaining`` is the measured error."""
    x = _data(300, 20)
    e = torch.tanh(x[:, :12] / 30) + 0.1 * torch.randn(300, 12, generator=torch.Generator().manual_seed(2),
                                                        dtype=torch.float64)  # not linear in x
    energy = float(e.square().sum())
    fitted = x @ torch.linalg.lstsq(x, e).solution
    v = torch.linalg.svd(fitted, full_matrices=False).Vh
    errors = []
    for r in (1, 3, 6, 12):
        fit = fit_low_rank(x.T @ x, x.T @ e, r, damp=0.0, energy=energy)
        error = float((e - x @ (fit.up @ fit.down).T).square().sum())
        best = float((e - fitted @ v[:r].T @ v[:r]).square().sum())
        assert error == pytest.approx(best, rel=1e-9)
        assert fit.remaining == pytest.approx(error / energy, rel=1e-6)
        errors.append(error)
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]


def test_the_affine_fit_removes_a_linear_error_with_an_offset_exactly():
    """With the bias (the default), ``E = X Wᵀ + c`` goes at full rank; without it the offset stays."""
    x = (_data(400, 12) + 5.0).float()  # inputs with a mean, as after a norm with massive channels
    w = torch.randn(8, 12, generator=torch.Generator().manual_seed(3))
    e = x @ w.T + torch.linspace(-1, 1, 8)
    stats = ErrorStats(12, 8, torch.device("cpu"))
    for xb, eb in zip(x.split(100), e.split(100)):
        stats.add(xb, eb)
    affine, linear = stats.fit(8, damp=0.0), stats.fit(8, damp=0.0, bias=False)
    torch.testing.assert_close(affine.up @ affine.down, w.double(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(affine.bias, torch.linspace(-1, 1, 8, dtype=torch.float64), rtol=1e-3, atol=1e-3)
    assert affine.remaining < 1e-8 < linear.remaining and linear.bias is None


def _held_out_fit_error(damp, n_fit: int, seed: int = 7) -> float:
    """Error left on fresh rows by a rank-8 fit made from ``n_fit`` rows of a noisy error that is
    partly a linear function of 30 correlated inputs (few rows: the undamped fit overfits the noise)."""
    g = torch.Generator().manual_seed(seed)
    mix, w = torch.randn(30, 30, generator=g), torch.randn(12, 30, generator=g) / 10

    def rows(n):
        x = torch.randn(n, 30, generator=g) @ mix
        return x, x @ w.T + 3 * torch.randn(n, 12, generator=g)

    stats = ErrorStats(30, 12, torch.device("cpu"))
    stats.add(*rows(n_fit))
    fit = stats.fit(8, damp=damp)
    x, e = rows(4000)
    return float((e.double() - (x.double() @ (fit.up @ fit.down).T + fit.bias)).square().mean())


def test_damping_chosen_by_cross_validation_holds_up_on_unseen_rows():
    # few rows: GCV damps the fit of the noise, where the fixed 1% barely does
    assert _held_out_fit_error(None, 40) < 0.9 * _held_out_fit_error(DAMP, 40)
    # many rows: a well-posed fit, where GCV does not bias it as heavy damping does
    assert _held_out_fit_error(None, 4000) < _held_out_fit_error(10.0, 4000)
    assert _held_out_fit_error(None, 4000) <= 1.01 * _held_out_fit_error(DAMP, 4000)


def test_a_recipe_from_before_the_damping_field_replays_with_the_fixed_damping():
    assert CompensationSpec.from_dict({"rank": 8, "halves": "both"}).damping == "fixed"
    assert CompensationSpec().damping == "gcv" and "damping" not in CompensationSpec().label()
    assert CompensationSpec(rank=8, damping="fixed").label() == "EoRA r8 mlp (fixed damping)"
    with pytest.raises(ConfigError, match="compensation damping"):
        CompensationSpec(rank=8, damping="auto").check()


def test_damping_only_shrinks_and_a_rank_beyond_the_data_is_capped():
    x = _data(200, 10)
    x[:, 7:] = 0.0  # three directions the data never moved
    e = x[:, :4] @ torch.ones(4, 6, dtype=torch.float64)
    energy = float(e.square().sum())
    exact = fit_low_rank(x.T @ x, x.T @ e, 10, damp=0.0, energy=energy)
    assert exact.down.shape[0] == 1 and exact.remaining < 1e-12  # the error has rank 1
    assert exact.down[:, 7:].abs().max() < 1e-12 * exact.down.abs().max()  # nothing read where no data went
    damped = fit_low_rank(x.T @ x, x.T @ e, 10, damp=0.1, energy=energy)
    assert exact.remaining < damped.remaining < 1.0  # shrunk, never worse than no correction


# --- on tiny models --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["fasp", "wanda-sp"])
def test_compensation_lowers_the_held_out_error_and_more_rank_is_no_worse(tiny, arch, method):
    lm = _lm(tiny, arch)
    results = {r: _compressed(lm, r, "both", method) for r in (0, 4, 16)}
    errors = {r: _held_out_error(result, lm) for r, result in results.items()}
    assert errors[4] < errors[0], errors
    with contextlib.ExitStack() as stack:  # the same model with its branches switched off
        for layer in lm.adapter.layers(results[4].model):
            stack.enter_context(side_branches(layer).suspended())
        assert _held_out_error(results[4], lm) > errors[4]
    # more rank fits the calibration tokens better; on unseen tokens it may lose a little to overfitting
    assert errors[16] <= errors[4] * 1.02, errors


@pytest.mark.parametrize("arch", ARCHS)
def test_a_compensated_model_saves_and_reloads_with_identical_logits(tiny, tmp_path, arch):
    lm = _lm(tiny, arch)
    result = _compressed(lm, 8, "both", parts="mlp+value")
    assert all(r == 8 for ranks in result.compensation.ranks.values() for r in ranks)
    save_compressed(result, tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "slimlab.json").read_text())
    assert meta["format_version"] == 2 and meta["compensation"]["ranks"] == result.compensation.ranks
    assert meta["recipe"]["compensation"] == {"rank": 8, "halves": "both", "damping": "gcv"}
    reloaded = load_compressed(tmp_path / "out", device="cpu")
    ids = _tokens(lm.model.config.vocab_size, 2, seed=3)
    torch.testing.assert_close(_logits(reloaded.model, ids), _logits(result.model, ids), rtol=0, atol=0)
    assert Recipe.from_dict(meta).compensation == CompensationSpec(8, "both")


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_branch_parameters_are_counted_as_added(tiny, arch):
    lm = _lm(tiny, arch)
    plain, comp = _compressed(lm, 0), _compressed(lm, 8, "both")
    hidden = lm.model.config.hidden_size
    expected = sum(r * (hidden + hidden) + hidden for ranks in comp.compensation.ranks.values() for r in ranks)
    layers = lm.adapter.layers(lm.model)
    assert expected == planned_params(layers, lm.adapter, CompensationSpec(8, "both"))  # A, B and b everywhere
    assert comp.accounting.added_detail["compensation branches"] == expected
    assert comp.accounting.params_added == plain.accounting.params_added + expected
    assert comp.accounting.params_total == plain.accounting.params_total + expected
    biases = hidden * 2 * lm.model.config.num_hidden_layers  # FLOPs count the linears' weights
    assert comp.accounting.flops_per_token == plain.accounting.flops_per_token + 2 * (expected - biases)
    assert comp.summary()["params_added_detail"]["compensation branches"] == expected
    assert not comp.structure.transformers_checkpoint  # from_pretrained would drop the branches


def test_a_half_left_as_it_was_gets_no_branch(tiny):
    lm = _lm(tiny, "llama")
    result = _compressed(lm, 8, "both", parts="mlp")  # value dims untouched: no attention error
    assert result.compensation.ranks == {"attention": [0, 0, 0], "mlp": [8, 8, 8]}
    assert all(set(side_branches(layer)) == {"mlp"} for layer in lm.adapter.layers(result.model))


@pytest.mark.parametrize("arch", ARCHS)
def test_the_original_is_untouched(tiny, arch):
    lm = _lm(tiny, arch)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    hooks = [len(m._forward_hooks) for m in lm.model.modules()]
    result = _compressed(lm, 8, "both")
    assert side_branches(lm.adapter.layers(result.model)[0]) is not None
    assert all(side_branches(layer) is None for layer in lm.adapter.layers(lm.model))
    assert [len(m._forward_hooks) for m in lm.model.modules()] == hooks
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method,params", [("shortgpt", {}), ("slicegpt", {"variant": "per-layer"}),
                                           ("slicegpt", {"variant": "shared"})])
def test_a_method_it_does_not_apply_to_is_refused(tiny, method, params):
    lm = _lm(tiny, "llama")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with pytest.raises(ConfigError, match=f"Compensation does not apply to method '{method}'.*off"):
        _compressed(lm, 8, "mlp", method, 0.3, **params)
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("arch", ARCHS)
def test_rank_zero_is_bit_identical_to_no_compensation(tiny, arch):
    lm = _lm(tiny, arch)
    calib = _calibration(lm)
    default = compress(lm, "fasp", 0.4, calibration=calib)
    zero = compress(lm, "fasp", 0.4, calibration=calib, compensation=CompensationSpec(0, "both"))
    ids = _tokens(lm.model.config.vocab_size, 2, seed=3)
    torch.testing.assert_close(_logits(zero.model, ids), _logits(default.model, ids), rtol=0, atol=0)
    assert zero.structure == default.structure and zero.compensation is None
    assert zero.accounting.to_dict() == default.accounting.to_dict()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_driver_reproduces_a_compensated_models_own_forward(tiny, arch):
    """A read-only pass over a compensated model adds each branch as the model's forward does: bit for bit."""
    lm = _lm(tiny, arch)
    model = _compressed(lm, 8, "both").model
    adapter = lm.adapter
    inputs = capture_layer_inputs(model, adapter, _tokens(model.config.vocab_size, 4, seed=4), 2)
    seen = []

    class Observe(LayerHooks):
        observes_layers = True

        def end_layer(self, index, layer, layer_in, layer_out):
            seen.append(layer_out)

    run_sequential(inputs, adapter, ModelLayers(model, adapter), Observe(), Reporter(), "check")
    x = inputs.hidden
    with torch.no_grad():
        for i, (layer, outputs) in enumerate(zip(adapter.layers(model), seen)):
            expected = [layer(h, **kw) for h, kw in zip(x, inputs.of_layer(i))]
            expected = [e[0] if isinstance(e, tuple) else e for e in expected]
            for got, want in zip(outputs, expected):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            x = expected


def test_the_branches_follow_a_deep_copy(tiny):
    lm = _lm(tiny, "llama")
    model = _compressed(lm, 8, "both").model
    twin = copy.deepcopy(model)
    ids = _tokens(model.config.vocab_size, 2, seed=5)
    reference = _logits(model, ids)
    torch.testing.assert_close(_logits(twin, ids), reference, rtol=0, atol=0)
    with torch.no_grad():
        for layer in lm.adapter.layers(twin):
            for branch in side_branches(layer).values():
                branch.up.weight.zero_()
    torch.testing.assert_close(_logits(model, ids), reference, rtol=0, atol=0)  # the copy's hooks are its own
    assert not torch.equal(_logits(twin, ids), reference)


def test_compensation_in_a_recipe_is_checked_and_round_trips():
    recipe = Recipe(model="tiny", method="fasp", ratio=0.2, compensation=CompensationSpec(16, "both"))
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    assert recipe.validate().label().endswith("+ EoRA r16 both")
    assert "EoRA" not in Recipe(model="tiny", method="fasp").validate().label()
    assert Recipe.from_dict({"method": "fasp"}).compensation == CompensationSpec()
    for bad in ({"rank": -1}, {"rank": 1.5}, {"rank": True}, {"halves": "ffn"}):
        with pytest.raises(ConfigError, match="compensation"):
            Recipe(method="fasp", compensation=CompensationSpec(**bad)).validate()
    for bad in ({"compensation": {"rank": 4, "damp": 1}}, {"compensation": 4}):
        with pytest.raises(ConfigError, match="compensation"):
            Recipe.from_dict({"method": "fasp"} | bad)


def test_recovery_trains_around_the_branches_and_keeps_them(tiny, data_dir, tmp_path):
    """LoRA distillation after compensation: the branches stay as fitted, the count is unchanged, it reloads."""
    from engine.recipes import RecoverySpec

    lm = _lm(tiny, "llama")
    heal = RecoverySpec(kind="lora", steps=3, nsamples=4, seqlen=32, batch_size=2, source="wikitext2:validation")
    plain = _compressed(lm, 8, "both")
    result = compress(lm, "fasp", 0.4, calibration=_calibration(lm), compensation=CompensationSpec(8, "both"),
                      recovery=heal)
    branches = {k: v for k, v in result.model.state_dict().items() if ".compensation." in k}
    assert branches and all(torch.equal(v, plain.model.state_dict()[k]) for k, v in branches.items())
    assert result.accounting.params_total == plain.accounting.params_total
    save_compressed(result, tmp_path / "out")
    ids = _tokens(lm.model.config.vocab_size, 2, seed=6)
    torch.testing.assert_close(_logits(load_compressed(tmp_path / "out", device="cpu").model, ids),
                               _logits(result.model, ids), rtol=0, atol=0)


def test_a_streamed_compensated_compression_equals_the_in_memory_one(tiny_dirs, tmp_path):
    """Layers spooled to disk as they are finished carry their branches into the sharded folder."""
    from engine import load_model

    whole = load_model(str(tiny_dirs["qwen2"]), device="cpu")
    streamed = load_model(str(tiny_dirs["qwen2"]), device="cpu", stream=True)
    results = [_compressed(lm, 8, "both", parts="mlp+value") for lm in (whole, streamed)]
    assert results[1].spooled and results[0].compensation == results[1].compensation
    for name, result in zip("ab", results):
        save_compressed(result, tmp_path / name)
    a, b = (load_compressed(tmp_path / name, device="cpu") for name in "ab")
    ids = _tokens(whole.model.config.vocab_size, 2, seed=8)
    torch.testing.assert_close(_logits(b.model, ids), _logits(a.model, ids), rtol=0, atol=0)
    torch.testing.assert_close(_logits(a.model, ids), _logits(results[0].model, ids), rtol=0, atol=0)


def test_a_compensation_structure_from_a_newer_slimlab_is_refused():
    from engine.transforms.compensation import CompensationStructure

    data = CompensationStructure({"attention": [0, 4], "mlp": [4, 4]}).to_dict()
    assert CompensationStructure.from_dict(data) == CompensationStructure({"attention": [0, 4], "mlp": [4, 4]})
    with pytest.raises(ConfigError, match="version"):
        CompensationStructure.from_dict(data | {"version": CompensationStructure.VERSION + 1})
    with pytest.raises(ValueError, match="halves"):
        CompensationStructure.from_dict(data | {"ranks": {"ffn": [1, 1]}})


# --- a budget in parameters ------------------------------------------------------------------------------------------
def _layer_params(layer) -> int:
    return sum(p.numel() for p in layer.parameters())


@pytest.mark.parametrize("arch,halves", [("llama", "mlp"), ("qwen2", "both"), ("opt", "attention")])
def test_a_share_maps_to_the_largest_rank_within_the_budget(tiny, arch, halves):
    lm = _lm(tiny, arch)
    layer = lm.adapter.layers(lm.model)[0]
    spec = CompensationSpec(share=0.1, halves=halves)
    rank = rank_for_share(spec.share, layer, lm.adapter, spec.half_names)
    hidden = lm.model.config.hidden_size  # every half reads and writes the residual width
    cost = lambda r: len(spec.half_names) * (r * 2 * hidden + hidden)  # noqa: E731 - A, B and b per half
    assert rank > 0 and cost(rank) <= 0.1 * _layer_params(layer) < cost(rank + 1)
    assert rank_for_share(0.0001, layer, lm.adapter, spec.half_names) == 0  # not even the bias fits


def test_a_share_compresses_at_its_rank_and_adds_what_was_planned(tiny):
    from engine import compensation_plan

    lm = _lm(tiny, "llama")
    spec = CompensationSpec(share=0.05, halves="both")
    ranks, planned = compensation_plan(lm, spec)
    result = compress(lm, "fasp", 0.4, calibration=_calibration(lm), compensation=spec)
    assert result.compensation.ranks == {"attention": ranks, "mlp": ranks} and ranks[0] > 0
    assert result.accounting.added_detail["compensation branches"] == planned
    assert planned <= 0.05 * sum(_layer_params(layer) for layer in lm.adapter.layers(lm.model))
    assert result.recipe.label().endswith("+ EoRA 5.0% both")
    from engine import planned_size  # the size shown before a run counts the branches as the run does

    sized = replace(result.recipe, plan=None, calibration=CalibrationSpec())  # a known source: the size needs no data
    assert planned_size(lm, sized).planned.params_total == result.accounting.params_total
    tiny_share = CompensationSpec(share=0.0001)  # buys no rank anywhere: no branch, same model as without
    assert compensation_plan(lm, tiny_share) == ([0, 0, 0], 0)
    assert compress(lm, "fasp", 0.4, calibration=_calibration(lm), compensation=tiny_share).accounting.params_added \
        == _compressed(lm).accounting.params_added


def test_a_share_is_parsed_and_checked():
    assert CompensationSpec.parse("0.05") == CompensationSpec(share=0.05, halves="mlp")
    assert CompensationSpec.parse(" 0.1:both ") == CompensationSpec(share=0.1, halves="both")
    assert not CompensationSpec.parse("0").enabled
    for bad in ("x", "1.5", "-0.1", "0.05:ffn"):
        with pytest.raises(ConfigError, match="compensation"):
            CompensationSpec.parse(bad)
    with pytest.raises(ConfigError, match="not both"):
        CompensationSpec(rank=4, share=0.05).check()
    recipe = Recipe(method="fasp", compensation=CompensationSpec(share=0.05))
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_the_frontier_size_search_pays_for_the_branches(tiny_dirs, data_dir):
    """A compensated recipe found for a size lands within 1% of it in *total* parameters, branches included."""
    from benches import load_bench

    from engine import load_model, params_total

    frontier = load_bench("frontier")
    lm = load_model(str(tiny_dirs["llama"]), device="cpu")
    dense = params_total(lm)
    finder = frontier.RatioFinder(lm, dense)
    recipe = Recipe(model=lm.spec, method="fasp", method_params={"round_to": 1},
                    compensation=frontier.compensation_spec("0.05:both"))
    ratio = finder.ratio(recipe, 0.8)
    result = compress(lm, replace(recipe, ratio=ratio), calibration=_calibration(lm))
    assert result.accounting.added_detail["compensation branches"] > 0.02 * dense  # the branches are not free
    assert abs(result.accounting.params_total / dense - 0.8) < 0.01
    plain = compress(lm, replace(recipe, ratio=ratio, compensation=CompensationSpec()), calibration=_calibration(lm))
    assert plain.accounting.params_total / dense < 0.8 - 0.02  # the method paid for them with width
