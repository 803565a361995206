"""A method registered from this file alone runs wherever a built-in one does: ``compress``, save and
reload, ``slimlab methods`` and the UI (docs/ADDING_A_METHOD.md walks through the same code).

The toy keeps, in every layer, the MLP channels whose activations on the calibration text are
loudest (optionally times the weight column norms) and drops the others, without restoration.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from torch import nn

from engine import CalibrationSpec, ConfigError, Recipe, compress, load_compressed, load_model, save_compressed
from engine.methods import Method, MethodOutput, Plan, Structure, register, unregister
from engine.models.adapters import Adapter
from engine.params import Param
from engine.progress import Reporter
from engine.stats import HalfOutcome, HalfStep, LayerHooks, run_sequential
from engine.transforms.prune import keep_top, prune_pair
from engine.transforms.widths import kept_mlp_width

NAME = "toy-loudest"


@dataclass
class LoudestStructure(Structure):
    """What ``rebuild`` needs: the MLP width of every layer (which channels were kept is in the weights)."""

    mlp: list[int]


class LoudestPass(LayerHooks):
    """At each layer's MLP half: score the down projection's input channels, keep the best."""

    needs_last_output = False  # nothing reads the last layer's output

    def __init__(self, plan: Plan, params: dict):
        self.plan, self.params, self.widths = plan, params, []

    def half(self, step: HalfStep) -> Optional[HalfOutcome]:
        if step.half != "mlp":
            return None
        score = step.stats().norms.to(step.writer.weight.device)  # ‖X_j‖₂ of every channel
        if self.params["by_weight"]:
            score = score * step.writer.weight.detach().double().norm(dim=0)
        k = kept_mlp_width(step.writer.in_features, self.plan.ratios[step.index], self.params["round_to"])
        kept = keep_top(score, k)
        prune_pair(step.parts.mlp_in, step.writer, kept, kept)
        self.widths.append(k)
        return HalfOutcome(columns=kept)  # the down projection now reads only these channels


class Loudest(Method):
    name = NAME
    label = "Toy: keep the loudest MLP channels"
    summary = "Keeps the MLP channels whose activations are largest on the calibration text; no restoration."
    params = (
        Param("round_to", "int", 8, "round MLP widths to a multiple of this", minimum=1, maximum=256),
        Param("by_weight", "bool", False, "multiply the activation norm by the weight column norm"),
    )
    structure_type = LoudestStructure

    def compress(self, work, calibration: CalibrationSpec, plan: Plan, params: dict, progress: Reporter) -> MethodOutput:
        hooks = LoudestPass(plan, params)
        run_sequential(work.capture(calibration), work.adapter, work, hooks, progress, self.name)
        return MethodOutput(widths={"mlp": hooks.widths}, structure=LoudestStructure(hooks.widths))

    def rebuild(self, model: nn.Module, adapter: Adapter, structure: LoudestStructure) -> None:
        for layer, width in zip(adapter.layers(model), structure.mlp):
            parts = adapter.parts_of(layer)
            keep = torch.arange(width)
            prune_pair(parts.mlp_in, parts.mlp_out, keep, keep)


@pytest.fixture(scope="module")
def toy():
    register(Loudest)
    yield NAME
    unregister(NAME)  # other test modules see only the built-in methods


@pytest.fixture(scope="module")
def result(toy, tiny_dirs, data_dir):
    lm = load_model(str(tiny_dirs["llama"]), device="cpu")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    recipe = Recipe(model=lm.spec, method=toy, method_params={"by_weight": True}, ratio=0.25,
                    calibration=CalibrationSpec("wikitext2:validation", 8, 64, 42))
    out = compress(lm, recipe, data_dir=str(data_dir))
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())  # the original is untouched
    return out


IDS = torch.tensor([[1, 5, 9, 12, 40, 7]])


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_a_duplicate_name_is_refused(toy):
    with pytest.raises(ConfigError, match="already registered"):
        register(Loudest)


def test_compress_runs_the_toy_through_the_driver(result):
    assert result.widths["mlp"] == [96, 96, 96]  # 128 channels, 25% removed, multiples of 8
    assert result.recipe.method == NAME and result.recipe.method_params == {"round_to": 8, "by_weight": True}
    assert result.accounting.params_total < result.original.params_total
    assert torch.isfinite(_logits(result.model)).all()


def test_save_and_reload_give_the_same_logits(result, tmp_path):
    out = save_compressed(result, tmp_path / "toy")
    meta = json.loads((out / "slimlab.json").read_text())
    assert meta["structure"] == {"version": 1, "mlp": [96, 96, 96]}
    for loader in (load_compressed, load_model):
        lm = loader(out, device="cpu")
        assert lm.meta["method"] == NAME
        assert torch.allclose(_logits(lm.model), _logits(result.model), atol=1e-5)


def test_the_cli_lists_it(toy, capsys):
    from engine.cli import main

    assert main(["methods", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["methods"]}
    assert [p["name"] for p in listed[NAME]["params"]] == ["round_to", "by_weight"]


def test_the_ui_builds_its_controls_and_endpoint(toy):
    import gradio as gr

    from ui import build_app, learn
    from ui.handlers import compress as hc
    from ui.tabs.compress import control

    assert (Loudest.label, NAME) in hc.method_choices()
    kinds = [type(control(p)) for p in hc.method_schemas()[NAME]]
    assert kinds == [gr.Number, gr.Checkbox]
    assert Loudest.summary in learn.learn_page()
    endpoint = build_app(preload_demo=False).get_api_info()["named_endpoints"]["/compress"]
    assert {"toy_loudest_round_to", "toy_loudest_by_weight"} <= {p["parameter_name"] for p in endpoint["parameters"]}
