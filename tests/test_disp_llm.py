"""DISP-LLM on tiny random models: every channel selected is the original, the training masks and the cut
give the same model, the target is hit, training is seeded and cancellable, and results save and reload."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from engine import CancelToken, Cancelled, Recipe, compress, load_compressed, save_compressed
from engine.analysis import account
from engine.errors import CorruptWeightsError
from engine.methods.disp_llm import LOSS_CURVE, RATIO_CURVE, TRAIN_STAGE
from engine.transforms.block_channels import MaskBox, masked, select_channels
from engine.transforms.selection_net import KINDS, LayerCost
from engine.transforms.value_heads import GatherLinear, ScatterLinear

from decomposition import calibration, lm as tiny_lm
from tiny import logits

FAST = {"steps": 4, "seqlen": 16, "batch": 2}
ARCHS = ["llama", "qwen2", "opt", "gemma3"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test trains into its own cache of networks."""
    monkeypatch.setenv("SLIMLAB_CACHE", str(tmp_path / "cache"))


def ids(lm) -> torch.Tensor:
    return torch.randint(3, lm.model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))


def run(lm, ratio=0.3, events=None, cancel=None, **params):
    recipe = Recipe(model=lm.spec, method="disp-llm", ratio=ratio, method_params=FAST | params)
    return compress(lm, recipe, calibration=calibration(lm, 4, 32), progress=None if events is None else events.append,
                    cancel=cancel)


def layer_linears(model, adapter) -> int:
    """Weights and biases of the layers' linears (what the ratio is a fraction of)."""
    return sum(p.numel() for layer in adapter.layers(model) for m in layer.modules()
               if isinstance(m, torch.nn.Linear) for p in m.parameters(recurse=False))


def random_selection(cost: LayerCost, gen: torch.Generator) -> dict:
    return {k: torch.sort(torch.randperm(n, generator=gen)[:max(1, n * 2 // 3)]).values
            for k, n in cost.sizes().items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_channel_selected_is_the_original(tiny, arch):
    lm = tiny_lm(tiny, arch)
    before = logits(lm.model, ids(lm))
    result = run(lm, ratio=0.0)
    parts = lm.adapter.parts(result.model, 0)
    assert isinstance(parts.query, GatherLinear) and isinstance(parts.down, ScatterLinear)  # the cut path ran
    assert result.plots["selection training"]["curve"] == []  # nothing to prune: no training
    torch.testing.assert_close(logits(result.model, ids(lm)), before, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(lm.model, ids(lm)), before, atol=0, rtol=0)  # the original is untouched


@pytest.mark.parametrize("arch", ARCHS)
def test_the_cut_model_is_the_masked_model_and_its_cost_is_counted(tiny, arch):
    """Masks of 0/1 on the full model (training) give the logits of the model cut to those channels, and the
    cost model counts exactly the cut layers' linear parameters."""
    lm = tiny_lm(tiny, arch)
    adapter = lm.adapter
    costs = [LayerCost.of(adapter.parts(lm.model, i)) for i in range(3)]
    assert sum(c.full for c in costs) == layer_linears(lm.model, adapter)
    gen = torch.Generator().manual_seed(0)
    kept = [random_selection(c, gen) for c in costs]
    masks = [{k: torch.zeros(n).index_fill_(0, sel[k], 1.0) for k, n in c.sizes().items()}
             for c, sel in zip(costs, kept)]
    with masked(adapter.layers(lm.model), adapter, MaskBox(masks)):
        expected = logits(lm.model, ids(lm))
    cut = copy.deepcopy(lm.model)
    for layer, sel in zip(adapter.layers(cut), kept):
        select_channels(layer, adapter, sel)
    torch.testing.assert_close(logits(cut, ids(lm)), expected, atol=1e-5, rtol=0)
    counted = sum(c.params({k: len(sel[k]) for k in KINDS}) for c, sel in zip(costs, kept))
    assert counted == layer_linears(cut, adapter) < layer_linears(lm.model, adapter)


def test_a_trained_run_hits_the_target_with_its_own_widths_and_curves(tiny):
    lm = tiny_lm(tiny, "llama")
    events = []
    result = run(lm, ratio=0.3, events=events, penalty=16.0)
    kept = layer_linears(result.model, lm.adapter) / layer_linears(lm.model, lm.adapter)
    assert abs(kept - 0.7) < 0.01
    loss, ratio = result.plots["selection training"]["curve"], result.plots["kept parameters"]["curve"]
    assert len(loss) == len(ratio) == FAST["steps"] and "target 0.700" in result.plots["kept parameters"]["title"]
    assert [e.step for e in events if e.stage == TRAIN_STAGE] == [1, 1, 2, 2, 3, 3, 4, 4]
    live = {c: [e.point.y for e in events if e.point and e.point.curve == c] for c in (LOSS_CURVE, RATIO_CURVE)}
    assert live == {LOSS_CURVE: loss, RATIO_CURVE: ratio}  # the live curves are the recorded ones
    widths = result.widths
    assert set(widths) == set(KINDS) and all(len(w) == 3 for w in widths.values())
    assert len({w for k in ("attn_in", "attn_out", "mlp_in", "mlp_out") for w in widths[k]}) > 1  # not one width
    again = run(lm, ratio=0.3, reuse=False)
    assert again.structure == result.structure and again.plots["selection training"]["trained_here"]  # seeded
    other = run(lm, ratio=0.3, seed=1)
    assert other.structure != result.structure


def test_training_moves_the_kept_ratio_to_the_target(tiny):
    """The penalty term alone (a flat LM loss is not what this checks) drives the sampled masks' ratio down."""
    lm = tiny_lm(tiny, "llama")
    ratios = run(lm, ratio=0.4, steps=25, lr=1e-2).plots["kept parameters"]["curve"]
    assert ratios[-1] < ratios[0] - 0.1 and abs(ratios[-1] - 0.6) < abs(ratios[0] - 0.6)


def test_stop_between_steps_cancels_and_leaves_the_original(tiny):
    lm = tiny_lm(tiny, "llama")
    before = logits(lm.model, ids(lm))
    token = CancelToken()

    def on_event(event):
        if event.stage == TRAIN_STAGE and event.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        compress(lm, Recipe(model=lm.spec, method="disp-llm", ratio=0.3, method_params=FAST),
                 calibration=calibration(lm, 4, 32), progress=on_event, cancel=token)
    torch.testing.assert_close(logits(lm.model, ids(lm)), before, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_save_and_reload_give_identical_logits(tiny, tmp_path, arch):
    lm = tiny_lm(tiny, arch)
    result = run(lm, ratio=0.3)
    save_compressed(result, tmp_path / "out")
    back = load_compressed(tmp_path / "out", device="cpu", dtype="float32")
    torch.testing.assert_close(logits(back.model, ids(lm)), logits(result.model, ids(lm)), atol=0, rtol=0)
    assert back.meta["widths"] == result.widths
    # the index buffers, counted beside the parameters: one per read or written selection, shared by a half's
    # readers (the MLP's neurons are simply cut: no index)
    entries = sum(sum(result.widths[k]) for k in ("attn_in", "attn_out", "mlp_in", "mlp_out"))
    assert result.accounting.index_entries == entries == result.summary()["index_entries"]
    assert account(back.model, back.adapter).index_entries == entries and result.original.index_entries == 0


def test_the_index_lists_are_saved_as_tensors_and_old_json_folders_still_load(tiny, tmp_path):
    from safetensors.torch import load_file

    from engine.compressed.format import STRUCTURE_FILE
    from engine.export import export

    lm = tiny_lm(tiny, "llama")
    result = run(lm, ratio=0.3)
    folder = save_compressed(result, tmp_path / "out")
    meta = json.loads((folder / "slimlab.json").read_text())
    lists = result.structure.to_dict()
    assert meta["format_version"] == 3 and not set(KINDS) & set(meta["structure"])  # no lists in the JSON
    assert meta["structure"]["tensors"] == {k: len(lm.adapter.layers(lm.model)) for k in KINDS}
    stored = load_file(str(folder / STRUCTURE_FILE))
    assert {t.dtype for t in stored.values()} == {torch.int32}
    assert [stored[f"mlp_mid.{i}"].tolist() for i in range(len(lists["mlp_mid"]))] == lists["mlp_mid"]
    expected = logits(result.model, ids(lm))

    old = tmp_path / "old"  # the same folder as an earlier SlimLab wrote it: the lists inline in slimlab.json
    shutil.copytree(folder, old)
    (old / STRUCTURE_FILE).unlink()
    (old / "slimlab.json").write_text(json.dumps(meta | {"format_version": 1, "structure": lists}, indent=2))
    assert (old / "slimlab.json").stat().st_size > 3 * (folder / "slimlab.json").stat().st_size
    exported = export(folder, "hf", "f32", tmp_path / "hf").path  # the structure file travels with an export
    for path in (folder, old, exported):
        back = load_compressed(path, device="cpu", dtype="float32")
        assert back.meta["structure"] == lists
        torch.testing.assert_close(logits(back.model, ids(lm)), expected, atol=0, rtol=0)

    (folder / STRUCTURE_FILE).unlink()
    with pytest.raises(CorruptWeightsError, match="slimlab_structure.safetensors.*missing or damaged"):
        load_compressed(folder, device="cpu")


def test_llama_cpp_and_decilm_refuse_it_by_name_and_transformers_loads_it(tiny, tmp_path, capsys):
    from engine.cli import main

    lm = tiny_lm(tiny, "llama")
    folder = save_compressed(run(lm, ratio=0.3), tmp_path / "out")
    for fmt in ("gguf", "decilm"):
        assert main(["export", str(folder), "--format", fmt]) == 2
        assert "DISP-LLM's per-block channel selections" in capsys.readouterr().err


def test_the_compress_tab_draws_the_loss_curve_the_ratio_curve_and_the_widths(tiny):
    from ui.handlers.compress import method_figure, training_curve

    lm = tiny_lm(tiny, "llama")
    plots = run(lm, ratio=0.3).plots
    assert list(training_curve(plots).data[0].y) == plots["selection training"]["curve"]
    drawn = method_figure(plots, 3)
    curves = [list(t.y) for t in drawn.data if t.type == "scatter"]
    bars = [list(t.y) for t in drawn.data if t.type == "bar"]
    assert curves == [plots["kept parameters"]["curve"]]
    assert bars == [plots["kept channels"][label] for label in plots["kept channels"]] and len(bars) == 5


def test_streamed_models_and_compensation_are_refused_in_one_line(tiny_dirs, tiny):
    from engine import ConfigError, load_model
    from engine.recipes import CompensationSpec

    streamed = load_model(str(tiny_dirs["llama"]), device="cpu", stream=True)
    with pytest.raises(ConfigError, match="disp-llm trains through the whole model at once"):
        run(streamed)
    lm = tiny_lm(tiny, "llama")
    recipe = Recipe(model=lm.spec, method="disp-llm", ratio=0.3, method_params=FAST,
                    compensation=CompensationSpec(4, "mlp"))
    with pytest.raises(ConfigError, match="Compensation does not apply to method 'disp-llm'"):
        compress(lm, recipe, calibration=calibration(lm, 4, 32))


def test_a_stored_network_is_reused_with_the_same_inputs_only(tiny):
    lm = tiny_lm(tiny, "llama")
    first = run(lm, ratio=0.3)
    events = []
    second = run(lm, ratio=0.3, events=events)
    assert first.plots["selection training"]["trained_here"] and not second.plots["selection training"]["trained_here"]
    assert not [e for e in events if e.stage == TRAIN_STAGE]  # no step ran
    assert second.structure == first.structure and "reused" in second.plots["selection training"]["note"]
    assert second.plots["selection training"]["curve"] == first.plots["selection training"]["curve"]
    assert run(lm, ratio=0.2).plots["selection training"]["trained_here"]  # another target trains anew
    assert run(lm, ratio=0.3, lr=2e-3).plots["selection training"]["trained_here"]  # another setting too
