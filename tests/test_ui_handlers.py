"""UI handlers as plain functions on tiny random models, plus the engine additions they use
(residual spectra, parameters per module, streaming chat, model card and push)."""
from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from engine import (
    CalibrationSpec, RecoverySpec, SlimLabError, VocabularySpec, account, block_influence, cut_width, export_formats, load_compressed,
    load_model, residual_analysis,
)
from engine.analysis.modules import module_params
from engine.errors import Cancelled, ConfigError
from engine.generate import SamplingSettings, stream_chat
from engine.publish import model_card, push_folder, read_meta
from tiny import save_model_dir
from ui import figures, learn, text
from ui.handlers import analyze as ha
from ui.handlers import chat as hch
from ui.handlers import compress as hc
from ui.handlers import evaluate as he
from ui.handlers import export as hx
from ui.handlers import model as hm
from ui.handlers.common import NotReady
from ui.state import ModelCache, Session

CALIB = ("wikitext2:validation", 8, 64, 42)  # source, samples, tokens per sample, seed


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tied-embedding llama with room for zero-shot contexts."""
    return str(save_model_dir(tmp_path_factory.mktemp("ui") / "llama", "llama", max_position_embeddings=2048))


@pytest.fixture(scope="module")
def cache():
    return ModelCache(capacity=2)


@pytest.fixture
def session(tiny_llama, cache, data_dir):
    s = Session()
    hm.load(s, tiny_llama, cache=cache)
    return s


@pytest.fixture(scope="module")
def compressed(tiny_llama, cache, data_dir):
    """A session holding a per-layer SliceGPT result (shared by the read-only tests below)."""
    s = Session()
    hm.load(s, tiny_llama, cache=cache)
    hc.run(s, "slicegpt", {}, 0.25, "uniform", None, *CALIB, [])
    return s


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --- state ---------------------------------------------------------------------

def test_fresh_sessions_are_independent_and_copyable():
    default = Session()
    a, b = copy.deepcopy(default), copy.deepcopy(default)  # what gradio does for each browser session
    a.chats["original"].append({"role": "user", "content": "hi"})
    assert b.chats["original"] == [] and default.chats["original"] == []
    assert a.stop() is False  # no job yet
    token = a.new_job()
    assert a.stop() is True and token.cancelled


def test_model_cache_loads_each_spec_once_and_evicts(tiny_dirs):
    calls = []

    def loader(spec, **kw):
        calls.append(spec)
        return load_model(spec, device="cpu")

    cache = ModelCache(capacity=1, loader=loader)
    first = cache.get(str(tiny_dirs["llama"]))
    assert cache.get(str(tiny_dirs["llama"])) is first
    cache.get(str(tiny_dirs["opt"]))
    assert str(tiny_dirs["llama"]) not in cache
    assert calls == [str(tiny_dirs["llama"]), str(tiny_dirs["opt"])]


# --- model tab -----------------------------------------------------------------

def test_load_describes_architecture_and_accounting(session, tiny_llama):
    view = hm.describe(session)
    assert "llama" in view.summary and "3 layers" in view.summary and "tied embeddings" in view.summary
    rows = dict(view.accounting)
    total = account(session.lm.model, session.lm.adapter).params_total
    assert rows["parameters, total (each tensor once)"] == text.m(total)
    assert view.num_layers == 3 and tiny_llama in view.status
    assert len(view.by_type.data) == 1 and len(view.per_layer.data) >= 2


def test_load_error_is_clear_and_keeps_the_session(session, cache):
    before = session.lm
    with pytest.raises(SlimLabError, match="No such file or folder"):
        hm.load(session, "/no/such/model", cache=cache)
    assert session.lm is before


def test_steps_before_their_prerequisites_say_what_to_do(data_dir):
    s = Session()
    with pytest.raises(NotReady, match="Model tab"):
        ha.analyze(s, *CALIB, 0.25)
    with pytest.raises(NotReady, match="Compress tab"):
        hx.save(s, "/tmp/x", False)


# --- analyze -------------------------------------------------------------------

def test_residual_analysis_matches_block_influence_and_energy(session):
    lm = session.lm
    tokens = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    calib = CalibrationSpec("random", 4, 32, 0, 2, tokens=tokens)
    result = residual_analysis(lm, calib)
    assert result.points[0] == "embeddings" and len(result.points) == 4
    assert result.block_influence == pytest.approx(block_influence(lm, calib), rel=1e-9)
    # eigenvalues of the per-token second moment sum to the mean squared norm of the embeddings
    emb = lm.model.get_input_embeddings()(tokens).double()
    assert sum(result.eigenvalues[0]) == pytest.approx(emb.pow(2).sum(-1).mean().item(), rel=1e-6)
    explained = result.explained()
    assert all(row[-1] == pytest.approx(1.0) and row == sorted(row) for row in explained)
    assert cut_width(576, 0.25) == 432


def test_analyze_handler_builds_every_chart(session):
    view = ha.analyze(session, *CALIB, 0.25)
    assert view.points == ["embeddings", "after layer 0", "after layer 1", "after layer 2"]
    assert "8 × 64 tokens" in view.summary
    assert len(view.heatmap.data[0].z) == 4
    assert len(view.lines.data) == len(view.chosen)
    assert ha.calibration_key(ha.calibration_spec(*CALIB)) in session.scores
    one = ha.lines(session, ["after layer 1"], 0.5)
    assert len(one.data) == 1 and any("cut for ratio 0.50: keep 32" in a.text for a in one.layout.annotations)


@pytest.mark.parametrize("bad, match", [(("wikitext2:validation", "x", 64, 42), "Samples must be a whole number"),
                                        (("wikitext2:validation", 0, 64, 42), "Samples .* from 1 to 10,000"),
                                        (("wikitext2:validation", 8, 4096, 42), "Tokens per sample .* from 8 to 2,048 .*"
                                                                                 "the model takes 2,048 positions"),
                                        (("wikitext2:validation", 8, 64, -1), "Seed .* of at least 0"),
                                        (("", 8, 64, 42), "calibration source"),
                                        (("nosuchsource", 8, 64, 42), "Unknown text source")])
def test_analyze_rejects_bad_calibration(session, bad, match):
    with pytest.raises(SlimLabError, match=match):
        ha.analyze(session, *bad, 0.25)


# --- compress ------------------------------------------------------------------

def test_methods_and_schedules_and_their_schemas_drive_the_controls():
    from engine import available_methods, available_schedules
    from ui.tabs.compress import control

    assert [name for _, name in hc.method_choices()] == list(available_methods())
    assert [name for _, name in hc.schedule_choices()] == list(available_schedules())
    schemas = hc.method_schemas() | hc.schedule_schemas()
    assert hc.schedule_schemas()["layer-redundancy"][0]["name"] == "slicing_base"
    assert hc.schedule_schemas()[hc.TABLE_SCHEDULE] == []  # the plan table is its input
    for schema in schemas.values():
        for param in schema:
            assert control(param).label == param["name"]
    keys = [("slicegpt", "variant"), ("other", "variant"), ("slicegpt", "damp")]
    assert hc.params_from_controls("slicegpt", keys, ["shared", "x", 0.1]) == {"variant": "shared", "damp": 0.1}
    assert hc.control_values("slicegpt", {"variant": "shared", "damp": 0.1}, keys, "keep") == ["shared", "keep", 0.1]


def test_plan_preview_edit_and_validation(session):
    lr = hc.preview_plan(session, "layer-redundancy", 0.3, {"slicing_base": 0.1}, *CALIB)
    ratios = [row[1] for row in lr.rows]
    assert sum(ratios) / 3 == pytest.approx(0.3, abs=1e-3) and min(ratios) >= 0.1 - 1e-9
    assert all(row[2] is not None for row in lr.rows)  # the scores the schedule ranked by
    edited = hc.edit_plan(session, [[0, 0.1, None], [1, "0.2", None], [2, 0.6, None]])
    assert session.plan.schedule == "manual" and session.plan.ratios == [0.1, 0.2, 0.6]
    assert "mean ratio 0.300" in edited.note
    assert edited.mean == pytest.approx(0.3) and edited.notices == []
    with pytest.raises(ConfigError, match="3 layers"):
        hc.edit_plan(session, [[0, 0.1, None]])


def test_a_manual_plan_is_checked_cell_by_cell_and_keeps_the_edits(session):
    clamped = hc.edit_plan(session, [[0, 0.95, None], [1, -0.2, None], [2, 0.3, None]])
    assert clamped.notices == ["Layer 0: 0.95 is above the maximum 0.9; set to 0.9.",
                               "Layer 1: -0.2 is below the minimum 0; set to 0."]
    assert [row[1] for row in clamped.rows] == [0.9, 0.0, 0.3] and session.plan.ratios == [0.9, 0.0, 0.3]
    assert clamped.mean == pytest.approx(0.4)  # what the Target ratio shows after the edit
    kept = session.plan
    with pytest.raises(ConfigError) as refused:  # blank and non-numeric cells: one problem each, named
        hc.edit_plan(session, [[0, "", None], [1, "abc", None], [2, 0.3, None]])
    assert str(refused.value) == ("Layer 0: the ratio is blank; type a number from 0 to 0.9. "
                                  "Layer 1: 'abc' is not a number; type a ratio from 0 to 0.9.")
    assert session.plan is kept  # the previous plan stays; the table keeps what was typed (nothing returned)
    with pytest.raises(ConfigError, match="Layer 2: 'x' is not a number"):
        hc.run(session, "slicegpt", {}, 0.25, "manual", None, *CALIB, [[0, 0.1, None], [1, 0.1, None], [2, "x", None]])
    assert session.result is None


def test_stop_and_failures_are_toasts_that_keep_the_outputs(monkeypatch):
    import gradio as gr

    from engine import Cancelled
    from ui.wiring import guarded, guarded_stream

    warned = []
    monkeypatch.setattr(gr, "Warning", lambda message, *a, **k: warned.append(message))

    def stopped(session, progress=None):
        raise Cancelled("Cancelled by the user; the original model is unchanged.")

    assert guarded(stopped)(None, lambda *a, **k: None) == gr.skip()  # every output keeps its value
    assert warned == ["Cancelled by the user; the original model is unchanged."]

    def chat(session):
        yield "first words"
        raise Cancelled("stopped")

    assert list(guarded_stream(chat)(None)) == ["first words", gr.skip()]
    with pytest.raises(gr.Error):  # a failure is an error toast; gradio then updates no output
        guarded(lambda session: hm.load(session, "/no/such/model"))(Session())


def test_compress_reports_plainly_when_the_model_grows(session):
    # a small ratio on a tied model: the untied head and shortcuts outweigh what slicing removes
    view = hc.run(session, "slicegpt", {"variant": "per-layer"}, 0.05, "uniform", None, *CALIB, [])
    assert session.result.bigger_than_original
    assert "BIGGER than the original" in view.card and "shared" in view.card
    assert "bigger than the original" in view.status
    shared = hc.run(session, "slicegpt", {"variant": "shared"}, 0.25, "uniform", None, *CALIB, [])
    assert not session.result.bigger_than_original and "fewer parameters" in shared.card
    assert [r.run_id for r in session.history] == [1, 2] and "variant=shared" in session.run.label


def test_a_choice_that_grows_the_model_is_flagged_with_its_size_before_running(session):
    grows = hc.size_from_controls(session, "slicegpt", {"variant": "per-layer"}, 0.05, "uniform", None, *CALIB, [])
    shrinks = hc.size_from_controls(session, "slicegpt", {"variant": "shared"}, 0.25, "uniform", None, *CALIB, [])
    assert session.result is None and session.scores == {}  # nothing was computed
    assert "BIGGER" in grows and "Planned size" in shrinks and "BIGGER" not in shrinks
    view = hc.run(session, "slicegpt", {"variant": "per-layer"}, 0.05, "uniform", None, *CALIB, [])
    summary = session.result.summary()
    assert f"{text.m(summary['params_total'])} parameters vs {text.m(summary['params_original'])}" in grows
    assert text.m(summary["params_total"]) in view.card  # the flag said what the run gave
    refused = hc.size_from_controls(session, "shortgpt", {}, 0.9, "uniform", None, *CALIB, [])
    assert "Cannot run as set" in refused and "all 3 layers" in refused


def test_the_compress_tab_opens_on_a_recipe_that_shrinks_the_model(session, monkeypatch):
    from dataclasses import replace

    from ui import presets

    start = hc.starting_point(session)  # no preset measured on this model: the engine's starter recipe
    assert start.name is None and start.controls.method == "fasp" and session.preset.recipe.method == "fasp"
    assert "Planned size" in start.size and "BIGGER" not in start.size
    assert len(start.controls.plan.rows) == 3  # the plan table fits the new model
    demo = presets.for_model("demo")
    assert demo.path.stem == "demo-90" and presets.for_model("org/other") is None
    monkeypatch.setattr(session, "lm", replace(session.lm, spec="demo"))
    opened = hc.starting_point(session)  # the demo opens on its measured preset
    assert opened.name == demo.name and session.preset is demo
    assert opened.controls.method == demo.recipe.method and opened.controls.ratio == demo.recipe.ratio
    assert "measured:" in opened.card
    if demo.recipe.vocabulary.keep > len(session.lm.tokenizer):  # a tiny model stands in for the demo here
        assert "Cannot run as set" in opened.size and f"the tokenizer has {len(session.lm.tokenizer)} tokens" in opened.size
    else:
        assert "Planned size" in opened.size


def test_on_a_short_context_model_the_opening_recipe_runs(cache, data_dir, tmp_path):
    s = Session()
    hm.load(s, str(save_model_dir(tmp_path / "short", "llama", max_position_embeddings=128)), cache=cache)
    c = hc.starting_point(s).controls
    calib = c.calibration
    assert calib["seqlen"] == 128 and c.recovery[-1] == 128  # both default to 512 tokens, refused here
    hc.check_recovery_sizes(hc.recovery_spec("lora", *c.recovery[1:]), 128)  # switching recovery on is runnable too
    hc.run(s, c.method, c.method_params, c.ratio, c.schedule, c.schedule_params, calib["source"], 8,
           calib["seqlen"], calib["seed"], c.plan.rows, recovery=hc.recovery_spec(*c.recovery))
    assert s.result.recipe.calibration.seqlen == 128 and s.result.accounting.params_total < \
        s.result.original.params_total


def test_the_analyze_tab_opens_on_samples_that_fit_the_models_context(session, cache, data_dir, tmp_path):
    from ui.app import _after_model

    assert ha.default_seqlen(session) == ha.SEQLEN == 256 and _after_model(session)[4] == 256  # 2,048 positions
    s = Session()
    hm.load(s, str(save_model_dir(tmp_path / "short", "llama", max_position_embeddings=128)), cache=cache)
    seqlen = _after_model(s)[4]  # what the Analyze tab's Tokens per sample shows after the load
    assert seqlen == ha.default_seqlen(s) == 128
    with pytest.raises(ConfigError, match="128 positions"):
        ha.analyze(s, "wikitext2:validation", 4, ha.SEQLEN, 0, 0.25)  # the tab's old fixed opening value
    assert "4 × 128 tokens" in ha.analyze(s, "wikitext2:validation", 4, seqlen, 0, 0.25).summary


def test_compress_applies_the_edited_plan_and_leaves_the_original(session):
    before = _state(session.lm.model)
    hc.preview_plan(session, "uniform", 0.25, None, *CALIB)
    rows = [[0, 0.5, None], [1, 0.25, None], [2, 0.0, None]]
    view = hc.run(session, "slicegpt", {}, 0.25, "manual", None, *CALIB, rows)
    assert session.result.plan.ratios == [0.5, 0.25, 0.0]
    assert session.result.widths["attention"] == [32, 48, 64]
    assert [row[1] for row in view.plan.rows] == [0.5, 0.25, 0.0]
    bars = view.plan.figure.data[0]
    assert "attention %{customdata[0]}" in bars.hovertemplate and bars.customdata[0][0] == 32
    after = session.lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_stop_cancels_a_running_compression(session):
    before = _state(session.lm.model)

    def press_stop(event):  # the Stop button, pressed while the engine reports progress
        if event.stage == "slicegpt" and event.step == 1:
            session.stop()

    with pytest.raises(Cancelled, match="unchanged"):
        hc.run(session, "slicegpt", {}, 0.25, "uniform", None, *CALIB, [], press_stop)
    assert session.result is None and session.history == []
    assert all(torch.equal(before[k], v) for k, v in session.lm.model.state_dict().items())


def test_presets_and_recipes_fill_the_controls(tmp_path):
    from ui import presets

    names = list(presets.recipe_presets())
    assert any("shared" in n for n in names)
    assert {r.method for r in presets.recipe_presets().values()} >= {"slicegpt", "fasp"}
    for recipe in presets.recipe_presets().values():
        c = hc.recipe_controls(recipe)  # the controls show each preset as it is
        assert c.method == recipe.method and c.plan is None
        assert {k: c.method_params[k] for k in recipe.method_params} == recipe.method_params
        assert c.calibration["source"] == recipe.calibration.source
        assert c.calibration["nsamples"] == recipe.calibration.nsamples
    lr = hc.recipe_controls(next(r for r in presets.recipe_presets().values()  # the v1 file, slicegpt-25-layer-...
                                 if r.schedule == "layer-redundancy" and r.method == "slicegpt"))
    assert lr.schedule_params["slicing_base"] == 0.15  # the v1 preset layout, read through Recipe
    replay = {"method": "slicegpt", "ratio": 0.3, "schedule": "uniform",
              "plan": {"schedule": "uniform", "target": 0.3, "ratios": [0.3, 0.2, 0.4]}}
    (tmp_path / "slimlab.json").write_text(json.dumps({"recipe": replay}))
    c = hc.recipe_controls(presets.read_recipe(tmp_path / "slimlab.json"))
    assert c.schedule == hc.TABLE_SCHEDULE and [r[1] for r in c.plan.rows] == [0.3, 0.2, 0.4]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="bad.json"):
        presets.read_recipe(tmp_path / "bad.json")


# --- evaluate ------------------------------------------------------------------

def test_evaluate_asks_for_what_is_missing(session):
    with pytest.raises(ConfigError, match="Tick at least one"):
        he.run_perplexity(session, [], "wikitext2", 64, 2)
    with pytest.raises(NotReady, match="Compress tab"):
        he.run_perplexity(session, ["compressed"], "wikitext2", 64, 2)


SIZING_BAD = [None, "", float("nan"), -1, 0, 2.5, "many", 1e30]  # what a browser or an API client can send


@pytest.mark.parametrize("bad", SIZING_BAD)
@pytest.mark.parametrize("handler, field, call", [
    ("perplexity", "seqlen", lambda s, v: he.run_perplexity(s, ["original"], "wikitext2", v, 2)),
    ("perplexity", "windows", lambda s, v: he.run_perplexity(s, ["original"], "wikitext2", 64, v)),
    ("zeroshot", "Items per task", lambda s, v: he.run_zeroshot(s, ["original"], ["piqa", "arc_easy"], v)),
    ("speed", "Prefill tokens", lambda s, v: he.run_speed(s, ["original"], v, 4)),
    ("speed", "Decode tokens", lambda s, v: he.run_speed(s, ["original"], 16, v)),
    ("analyze", "Samples", lambda s, v: ha.analyze(s, "wikitext2:validation", v, 64, 42, 0.25)),
    ("analyze", "Tokens per sample", lambda s, v: ha.analyze(s, "wikitext2:validation", 8, v, 42, 0.25)),
    ("compress", "Samples", lambda s, v: hc.run(s, "fasp", {}, 0.25, "uniform", None, "wikitext2:validation", v, 64,
                                                42, [])),
])
def test_a_blank_or_huge_size_is_refused_naming_the_field_and_its_range(session, handler, field, call, bad):
    """A sizing field never reads a blank, a NaN or a huge value as "all of it": the message names the field
    and the range it takes, and nothing was measured or run."""
    with pytest.raises(ConfigError, match=f"^{field} must be a whole number (from|of at least) "):
        call(session, bad)
    assert not session.original_evals and session.run is None and session.analysis is None


def test_the_ranges_come_from_the_model_and_the_data(session):
    """windows is bounded by what the text holds at that seqlen, seqlen and the speed sizes by the model's
    context, the items per task by the largest picked task."""
    from engine import context_length, perplexity_windows, zeroshot_item_counts

    available = perplexity_windows(session.lm, "wikitext2", 64)
    assert context_length(session.lm) == 2048 and available > 100
    with pytest.raises(ConfigError, match=f"windows .* from 1 to {available:,} .*wikitext2 has {available:,} windows "
                                          "of 64 tokens"):
        he.run_perplexity(session, ["original"], "wikitext2", 64, available + 1)
    with pytest.raises(ConfigError, match="seqlen .* from 8 to 2,048 .*the model takes 2,048 positions"):
        he.run_perplexity(session, ["original"], "wikitext2", 2049, 1)
    with pytest.raises(ConfigError, match="longer than the model's context"):
        perplexity_windows(session.lm, "wikitext2", 2049)
    counts = zeroshot_item_counts(["piqa", "arc_easy"])
    assert counts == {"piqa": 1838, "arc_easy": 2376}
    with pytest.raises(ConfigError, match="Items per task .* from 1 to 2,376 .*piqa 1,838, arc_easy 2,376 items"):
        he.run_zeroshot(session, ["original"], ["piqa", "arc_easy"], 2377)
    with pytest.raises(ConfigError, match="Prefill tokens .* from 1 to 2,048"):
        he.run_speed(session, ["original"], 2049, 4)
    assert not session.original_evals
    view = he.run_perplexity(session, ["original"], "wikitext2", "64", 2.0)  # what the Number boxes send
    assert session.original_evals["perplexity"]["windows"] == 2 and "2 windows" in view.table[0][0]


def test_perplexity_comparison_and_history(compressed):
    view = he.run_perplexity(compressed, ["original", "compressed"], "wikitext2", 64, 2)
    row = view.table[0]
    assert row[0] == "perplexity (wikitext2, seqlen 64, 2 windows)" and row[1] != "–" and row[2] != "–"
    assert compressed.original_evals["perplexity"]["windows"] == 2
    points = he.history_points(compressed)
    assert [p["label"] for p in points] == ["original", "run 1"]
    assert len(view.history.data) == 1  # one protocol, one trace
    assert view.history_rows[0][0] == 1 and "wikitext2" in view.history_rows[0][4]


def test_speed_and_zeroshot_land_in_the_table(compressed):
    view = he.run_speed(compressed, ["original"], 16, 4)
    labels = [r[0] for r in view.table]
    assert "prefill tokens/s" in labels and "decode tokens/s, batch 1" in labels
    view = he.run_zeroshot(compressed, ["original", "compressed"], ["piqa"], 4)
    row = next(r for r in view.table if r[0].startswith("piqa"))
    assert "n=4" in row[0] and row[1] != "–" and row[2] != "–"
    md, js = he.report_files(compressed)
    assert md.endswith("report.md") and json.loads(open(js).read())["models"][1]["zeroshot"]


def test_speed_rows_show_the_repeats_range_and_call_overlaps_noise():
    def speed(median, low, high):
        return {"decode_tokens_per_s_b1": median, "spread": {"decode_tokens_per_s_b1": [low, high]}}

    row = he.comparison_rows({"speed": speed(100.0, 90.0, 110.0)}, {"speed": speed(105.0, 104.0, 120.0)})[0]
    assert row == ["decode tokens/s, batch 1", "100.0 (90.0–110.0)", "105.0 (104.0–120.0)", "within noise"]
    apart = he.comparison_rows({"speed": speed(100.0, 90.0, 110.0)}, {"speed": speed(150.0, 140.0, 160.0)})[0]
    assert apart[3] == "+50.0% (better)"
    old = he.comparison_rows({"speed": {"decode_tokens_per_s_b1": 100.0}}, {"speed": speed(150.0, 140.0, 160.0)})[0]
    assert old[1:] == ["100.0", "150.0 (140.0–160.0)", "+50.0% (better)"]  # a figure kept from before has no range


# --- chat ----------------------------------------------------------------------

def test_stream_chat_same_seed_same_answer(tiny):
    model, tok = tiny("llama")
    msgs = [{"role": "user", "content": "the quick brown fox"}]
    settings = SamplingSettings(max_new_tokens=6, temperature=1.0, seed=7)
    rounds = list(stream_chat([(model, tok), (copy.deepcopy(model), tok)], [msgs, msgs], settings))
    a, b = rounds[-1]
    assert a.text == b.text and a.tokens == 6 and a.stop_reason == "length"
    assert len(rounds) == 6  # one update per generated token
    other = list(stream_chat([(model, tok)], [msgs], SamplingSettings(max_new_tokens=6, temperature=1.0, seed=8)))
    assert other[-1][0].text != a.text
    with pytest.raises(ConfigError, match="top_p"):
        list(stream_chat([(model, tok)], [msgs], SamplingSettings(top_p=0)))


def test_chat_both_models_side_by_side(compressed):
    views = list(hch.chat(compressed, "hello fox", 4, 0.0, 0.9, 50, 1.0, 0))
    last = views[-1]
    assert [m["role"] for m in last.original] == ["user", "assistant"] and last.compressed[0]["content"] == "hello fox"
    assert "tokens/s" in last.original_stats and "tokens/s" in last.compressed_stats
    assert compressed.chats["compressed"][-1]["content"] == last.compressed[-1]["content"]
    with pytest.raises(ConfigError, match="prompt"):
        list(hch.chat(compressed, "  ", 4, 0.0, 0.9, 50, 1.0, 0))
    cleared = hch.clear(compressed)
    assert cleared.original == [] and cleared.compressed_stats == ""  # a run is loaded: no "no compressed model"
    assert cleared.compressed_label.startswith("Compressed: run 1 · slicegpt") and "run 1" in cleared.compressed_placeholder


@pytest.mark.parametrize("call, match", [
    (lambda s: list(hch.chat(s, "hi", 1e30, 0.7, 0.9, 50, 1.1, 0)), r"Max new tokens .* from 1 to 512"),
    (lambda s: list(hch.chat(s, "hi", 4, float("nan"), 0.9, 50, 1.1, 0)), r"Temperature .* from 0 to 2 \(got nan\)"),
    (lambda s: list(hch.chat(s, "hi", 4, 0.7, 0.9, 50, None, 0)), r"Repetition penalty .* \(got a blank field\)"),
    (lambda s: list(hch.chat(s, "hi", 4, 0.7, 0.9, -1, 1.1, 0)), "top-k .* from 0 to 200"),
    (lambda s: list(hch.chat(s, "hi", 4, 0.7, 0.9, 50, 1.1, 1e30)), "Seed .* from 0 to 4,294,967,295"),
    (lambda s: ha.lines(s, [], float("nan")), r"Slicing ratio .* from 0 to 0.9 \(got nan\)"),
    (lambda s: hc.preview_plan(s, "uniform", None, {}, *CALIB), "target ratio must be a number"),
    (lambda s: hc.preview_plan(s, None, 0.2, {}, *CALIB), "Pick a schedule"),
    (lambda s: he.run_perplexity(s, ["original"], None, 64, 1), "Pick a text source"),
    (lambda s: he.run_speed(s, ["original", "compressed"], 8, 4, "no-such-run"), "Run no-such-run"),
    (lambda s: hch.pick_run(s, ""), "Run  is no longer kept"),
], ids=["max tokens huge", "temperature NaN", "penalty blank", "top-k negative", "seed huge", "cut NaN",
        "ratio blank", "schedule blank", "text blank", "run typo", "run blank"])
def test_values_the_ui_matrix_found_crashing_are_clear_errors(session, call, match):
    """What tests/test_ui_bad_input.py found raising deep inside (TypeError, ValueError, an overflow), each
    now a one-line message that names the field."""
    hc.run(session, "slicegpt", {}, 0.25, "uniform", None, *CALIB, [])
    with pytest.raises(SlimLabError, match=match):
        call(session)


def test_a_bad_preset_name_or_recipe_upload_is_named(tmp_path):
    from ui.presets import Preset, all_presets, preset_named

    first = next(iter(all_presets()))
    assert preset_named(None) is None and preset_named(first).name == first
    with pytest.raises(ConfigError, match="There is no preset 'nope'; pick one of: Demo 0.90x"):
        preset_named("nope")
    with pytest.raises(ConfigError, match="No recipe file came with the upload"):
        Preset.read(None)
    (tmp_path / "r.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="r.json: not a text file"):
        Preset.read(tmp_path / "r.json")


def test_a_folder_name_the_file_system_refuses_is_a_clear_error(compressed, tmp_path):
    with pytest.raises(ConfigError, match="Could not save into '.*word word .*File name too long"):
        hx.save(compressed, str(tmp_path / ("word " * 100)), True)


def test_chat_and_evaluate_pick_any_kept_run_newest_first(session, monkeypatch):
    from ui import state
    from ui.handlers.common import run_choices

    monkeypatch.setattr(state, "KEEP_MODELS", 2)
    for ratio in (0.25, 0.5, 0.375):
        hc.run(session, "slicegpt", {"variant": "shared"}, ratio, "uniform", None, *CALIB, [])
    runs = run_choices(session)
    assert [run_id for _, run_id in runs.choices] == [3, 2] and runs.value == 3  # run 1 released its model
    assert runs.choices[1][0] == f"run 2 · {session.history[1].label} · {text.m(session.history[1].summary['params_total'])}"
    assert session.history[0].result is None and session.history[0].summary  # its figures stay
    view = hch.pick_run(session, 2)
    assert view.compressed_label == f"Compressed: {session.history[1].title()}" and session.chat_run == 2
    last = list(hch.chat(session, "hello", 3, 0.0, 0.9, 50, 1.0, 0))[-1]
    assert last.compressed_label.startswith("Compressed: run 2 ·")
    assert last.compressed[-1]["content"] == session.chats["compressed"][-1]["content"]
    with pytest.raises(NotReady, match="Run 1 is no longer kept"):
        hch.pick_run(session, 1)
    he.run_perplexity(session, ["compressed"], "wikitext2", 64, 1, 2)  # measures run 2, not the newest
    assert "perplexity" in session.history[1].evals and "perplexity" not in session.history[2].evals
    assert he.view(session, 2).table[0][2] != "–" and he.view(session, 3).table == []  # run 3: nothing measured
    with pytest.raises(NotReady, match="Run 1 is no longer kept"):
        he.run_speed(session, ["compressed"], 8, 2, 1)


def test_stop_ends_the_chat_and_keeps_what_was_said(session):
    stream = hch.chat(session, "hello", 50, 0.0, 0.9, 50, 1.0, 0)
    first = next(stream)
    session.stop()
    views = [first, *stream]
    assert len(views) == 2 and views[-1].original_stats.endswith("stopped")
    assert session.chats["original"] == [{"role": "user", "content": "hello"},
                                         {"role": "assistant", "content": views[-1].original[-1]["content"]}]


def test_chat_with_only_the_original(session):
    last = list(hch.chat(session, "hi", 2, 0.0, 0.9, 50, 1.0, 0))[-1]
    assert last.compressed == [] and last.compressed_stats == hch.NO_COMPRESSED


# --- export --------------------------------------------------------------------

def test_save_reloads_and_refuses_to_overwrite(compressed, tmp_path):
    out = tmp_path / "saved"
    assert "Saved run 1" in hx.save(compressed, str(out), False)
    lm = load_compressed(out, device="cpu")
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert torch.allclose(lm.model(ids).logits, compressed.result.model(ids).logits, atol=1e-5)
    with pytest.raises(ConfigError, match="tick Overwrite"):
        hx.save(compressed, str(out), False)
    assert "Saved run 1" in hx.save(compressed, str(out), True)
    path, body = hx.recipe(compressed)
    expected = json.loads(json.dumps(compressed.result.recipe.to_dict()))
    assert json.loads(open(path).read()) == json.loads(body) == expected


def test_save_is_confined_to_outputs_on_a_space(compressed, monkeypatch, tmp_path):
    monkeypatch.setenv("SPACE_ID", "someone/slimlab")
    with pytest.raises(ConfigError, match="only be saved under"):
        hx.save(compressed, str(tmp_path / "elsewhere"), False)
    with pytest.raises(ConfigError, match="only be read under"):  # nor read back from elsewhere
        hx.export(Session(), "outputs/m.gguf", False, "gguf", "f16", str(tmp_path))


@pytest.fixture(scope="module")
def fasp(tiny_llama, cache, data_dir):
    """A session holding a FASP result (MLP width 88 of 128: no whole q8_0 block; narrowed value heads): every
    export format takes it."""
    s = Session()
    hm.load(s, tiny_llama, cache=cache)
    hc.run(s, "fasp", {}, 0.3, "uniform", None, *CALIB, [])
    return s


def test_export_formats_and_dtypes_come_from_the_engine(fasp):
    formats = export_formats()
    assert [name for _, name in hx.format_choices()] == [hx.SLIMLAB, *formats]
    gguf = hx.pick_format(fasp, "gguf")
    assert gguf.dtypes == list(formats["gguf"].dtypes) and gguf.dtype == formats["gguf"].default_dtype
    assert "q4_0" in gguf.dtypes and gguf.path.endswith("-run1.gguf") and "SliceGPT" in gguf.about
    assert hx.pick_format(fasp, "hf").path.endswith("-run1-hf") and hx.pick_format(fasp, hx.SLIMLAB).dtypes == []
    assert hx.default_output(fasp, "decilm") == hx.pick_format(fasp, "decilm").path
    with pytest.raises(ConfigError, match="not available here"):
        hx.pick_format(fasp, "onnx")


@pytest.mark.parametrize("name, dtype, says", [
    ("gguf", "q8_0", ["llama, q8_0", "stay f16", "zero-padded", "run it with: llama-cli -m"]),
    ("hf", "f16", ["SlimLabForCausalLM", "weights in f16", "trust_remote_code=True"]),
    ("decilm", "bf16", ["DeciLMForCausalLM", "zero-padded", "run it with: vllm serve"]),
    (hx.SLIMLAB, None, ["Saved run 1", "engine.load_compressed"]),
])
def test_export_writes_each_format_and_says_what_it_wrote(fasp, tmp_path, name, dtype, says):
    out = tmp_path / "out"
    message = hx.export(fasp, str(out), False, name, dtype)
    assert out.exists() and all(s in message for s in says), message
    size = out.stat().st_size if out.is_file() else sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert text.mb(size) in message
    if name == "hf":
        assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    with pytest.raises(ConfigError, match="tick Overwrite"):
        hx.export(fasp, str(out), False, name, dtype)


def test_export_of_a_saved_folder_and_of_a_folder_that_is_not_a_result(fasp, tiny_llama, tmp_path):
    saved = tmp_path / "saved"
    hx.save(fasp, str(saved), False)
    assert "Exported `" in hx.export(Session(), str(tmp_path / "m.gguf"), False, "gguf", "f16", str(saved))
    with pytest.raises(ConfigError, match="is not a SlimLab result"):
        hx.export(Session(), str(tmp_path / "n.gguf"), False, "gguf", "f16", tiny_llama)
    with pytest.raises(ConfigError, match="already a SlimLab folder"):
        hx.export(Session(), str(tmp_path / "copy"), False, hx.SLIMLAB, None, str(saved))
    with pytest.raises(NotReady):
        hx.export(Session(), str(tmp_path / "o.gguf"), False, "gguf", "f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "saved"]


def test_a_refused_or_unwritable_export_is_a_toast_and_leaves_nothing(compressed, fasp, tmp_path):
    import gradio as gr

    from ui.wiring import guarded

    first = tmp_path / "first.gguf"
    hx.export(fasp, str(first), False, "gguf", "f16")
    before = first.read_bytes()
    call, bar = guarded(hx.export), lambda *args, **kwargs: None  # bar: what gradio's progress would be
    with pytest.raises(gr.Error, match="llama.cpp cannot express SliceGPT per-layer.*export to GGUF: ShortGPT"):  # the run is SliceGPT per-layer
        call(compressed, str(tmp_path / "sliced.gguf"), False, "gguf", "f16", "", bar)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(gr.Error, match="Cannot write to"):
        call(fasp, str(blocker / "m.gguf"), False, "gguf", "f16", "", bar)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "first.gguf"] and first.read_bytes() == before


@pytest.mark.parametrize("fmt, match", [("gguf", "cannot express SliceGPT per-layer"),
                                        ("decilm", "DeciLM \\(vLLM\\) cannot express SliceGPT")])
def test_the_current_run_is_refused_by_the_format_before_anything_is_saved(compressed, tmp_path, monkeypatch, fmt,
                                                                          match):
    """The format's check reads the result in memory: a run it cannot express is refused in a moment, without
    the temporary save the export of a run not saved yet would start with."""
    import time

    saves = []
    monkeypatch.setattr(hx, "save_compressed", lambda *args, **kwargs: saves.append(args))
    monkeypatch.setattr(compressed, "saved", None)  # not saved yet (an earlier test may have saved it)
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=match):
        hx.export(compressed, str(tmp_path / "out"), False, fmt, None)
    assert time.perf_counter() - t < 1.0 and saves == [] and compressed.saved is None
    assert list(tmp_path.iterdir()) == []


class RecordingHub:
    """Stands in for huggingface_hub.HfApi: records each call instead of going to the network."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda **kwargs: self.calls.append((name, kwargs))


def test_model_card_says_when_bigger_and_push_uploads_folder_and_card(compressed, tmp_path):
    card = hx.card(compressed, "me/tiny-slice")
    folder = compressed.saved
    meta = read_meta(folder)
    assert card == model_card(meta, "me/tiny-slice", hx.measured(compressed))
    assert card.startswith("---\nlibrary_name: transformers") and "- slicegpt" in card
    assert '"method": "slicegpt"' in card and "load_compressed" in card
    grown = meta["original_accounting"]["params_total"] + 1
    bigger = meta | {"accounting": meta["accounting"] | {"params_total": grown}}
    assert "bigger than the original" in model_card(bigger, "me/x")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in model_card(
        meta | {"recipe": meta["recipe"] | {"model": "demo"}}, "me/x")

    hub = RecordingHub()
    message = hx.push(compressed, "me/tiny-slice", "hf_token", True, api=hub)
    assert "huggingface.co/me/tiny-slice" in message
    names = [name for name, _ in hub.calls]
    assert names == ["create_repo", "upload_folder", "upload_file"]
    assert hub.calls[0][1]["private"] is True and hub.calls[1][1]["folder_path"] == str(folder)
    assert hub.calls[2][1]["path_in_repo"] == "README.md"
    assert hub.calls[2][1]["path_or_fileobj"].decode() == card  # what the Export tab showed
    with pytest.raises(ConfigError, match="your-name/model-name"):
        push_folder(folder, "not a repo", "tok", api=hub)
    with pytest.raises(ConfigError, match="token"):
        hx.push(compressed, "me/x", " ", False, api=hub)


def test_model_card_carries_what_the_session_measured(compressed):
    he.run_perplexity(compressed, ["original", "compressed"], "wikitext2", 64, 2)
    he.run_speed(compressed, ["compressed"], 16, 4)
    card = hx.card(compressed, "me/tiny-slice")
    ppl = {k: compressed_evals["perplexity"]["ppl"] for k, compressed_evals in hx.measured(compressed).items()}
    section = card.split("## Measured")[1].split("## Load it")[0]
    assert "### Perplexity" in section and "wikitext2, seqlen 64, 2 windows" in section
    assert f"| original | {ppl['original']:,.4g} |" in section and f"| compressed | {ppl['compressed']:,.4g} |" in section
    decode = compressed.run.evals["speed"]["decode_tokens_per_s_b1"]
    row = next(line for line in section.splitlines() if line.startswith("| decode_tokens_per_s_b1 |"))
    assert "### Speed" in section and f"| {decode:,.4g} |" in row  # the original's column too, if measured first
    assert '"method": "slicegpt"' in card.split("## Load it")[1]  # the recipe is still there
    meta = read_meta(compressed.saved)
    unmeasured = model_card(meta, "me/x").split("## Measured")[1].split("## Load it")[0]
    assert "Nothing was measured" in unmeasured and "### " not in unmeasured


# --- engine: parameters per module ---------------------------------------------

def test_module_params_add_up_and_show_what_a_method_added(compressed):
    lm = compressed.lm
    parts = module_params(lm.model, lm.adapter)
    assert sum(parts.by_type.values()) == parts.total == account(lm.model, lm.adapter).params_total
    assert all(row["other"] == 0 for row in parts.per_layer) and "head" not in parts.by_type  # tied
    sliced = module_params(compressed.result.model, lm.adapter)
    assert sliced.total == compressed.result.accounting.params_total
    assert all(row["other"] > 0 for row in sliced.per_layer)  # shortcut matrices
    assert sliced.by_type["head"] == compressed.result.model.lm_head.weight.numel()  # untied copy


# --- text, figures, learn, wiring ------------------------------------------------

def test_verdict_on_the_demo_numbers():
    bigger = {"params_total": 140_652_288, "params_original": 134_515_008, "bigger_than_original": True,
              "params_added_detail": {"untied head": 28_311_552, "shortcut matrices": 9_953_280}}
    assert "BIGGER than the original" in text.verdict(bigger) and "+4.6%" in text.verdict(bigger)
    smaller = bigger | {"params_total": 110_000_000, "bigger_than_original": False, "params_added_detail": {}}
    assert "18.2% fewer parameters" in text.verdict(smaller)


def test_every_figure_says_what_it_measures():
    figs = [
        figures.spectra_heatmap(["embeddings", "after layer 0"], [[3.0, 1.0], [2.0, 2.0]], 100),
        figures.spectra_lines(["a"], [[0.5, 1.0]], ["a"], 1, 0.5),
        figures.layer_scores([0.5, 0.1], [0.0, 1.0]),
        figures.params_by_type({"embedding": 10, "mlp": 30}, 40),
        figures.params_per_layer([{"attention": 1, "mlp": 2, "norms": 0, "other": 0}]),
        figures.plan_chart([0.2, 0.3], [1.0, 0.0], "layer redundancy"),
        figures.accounting_chart(*[{"params_total": t, "params_embedding": 1, "params_head": h,
                                    "params_non_embedding": t - 1 - h} for t, h in ((10, 0), (12, 1))]),
        figures.perplexity_chart([("original", 10.0)], "wikitext2, seqlen 64, 2 windows"),
        figures.zeroshot_chart({"original": {"tasks": {"piqa": {"acc": 0.5, "acc_norm": 0.6, "acc_norm_stderr": 0.1,
                                                                "metric": "acc_norm", "n": 4}}}}),
        figures.speed_chart({"original": {"prefill_tokens_per_s": 100.0, "device": "cpu"}}),
        figures.history_scatter([{"label": "original", "params": 1e6, "ppl": 10.0, "protocol": "p", "original": True}]),
        figures.recovery_curve({"kind": "lora", "losses": [0.5, 0.4], "kl": [0.5, 0.4], "hidden": [0.0, 0.0],
                                "steps": 2, "seconds": 1.0, "stopped_by": "steps", "hidden_matched": False,
                                "text": {"source": "alpaca-chat", "nsamples": 8, "seqlen": 32}}),
    ]
    for fig in figs:
        assert fig.layout.title.text and len(fig.layout.title.text) > 10
        assert fig.data
    assert figures.zeroshot_chart({"original": {"tasks": {"piqa": {"acc": 0.5, "acc_norm": 0.6, "acc_norm_stderr": 0.1,
                                                                   "metric": "acc_norm", "n": 4}}}}).data[0].y == (0.6,)


def test_learn_page_covers_every_method_schedule_and_plot():
    from engine import available_methods, available_schedules

    page = learn.learn_page()
    for name, owner in (available_methods() | available_schedules()).items():
        assert f"`{name}`" in page and owner.summary in page
    for key in learn.PLOTS:
        assert learn.PLOTS[key] in page



def test_learn_page_draws_and_links_every_method():
    """Each method's picture and paper come from its own attributes (``removes``, ``paper``): no UI code per method."""
    import base64

    from engine import METHOD_PARTS, available_methods

    page = learn.learn_page()
    for name, method in available_methods().items():
        missing = f"{name}: set its `paper` and `removes` (docs/ADDING_A_METHOD.md)"
        assert method.paper.startswith("https://arxiv.org/abs/") and f"[{method.paper}]({method.paper})" in page, missing
        assert method.removes and set(method.removes) <= set(METHOD_PARTS), missing
        section = page.split(f"(`{name}`)")[1].split("\n### ")[0]
        assert learn.diagram(method.removes) in section and learn.shrinks(method.removes) in section
    svg = base64.b64decode(learn.diagram(("mlp",)).split("base64,")[1].split('"')[0]).decode()
    assert svg.count(learn.CUT[1]) == 1 and ">MLP<" in svg  # only the MLP box is red
    assert {"olica", "prunenet", "dotresize"} <= set(available_methods())
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert rows and all(len(re.findall(r"(?<!\\)\|", row)) == 4 for row in rows)  # a '|' in a help text is escaped


def test_guarded_turns_errors_into_messages_and_wires_progress():
    import inspect

    import gradio as gr

    from ui.wiring import guarded

    def handler(session, value, progress=None):
        if value == "bad":
            raise ConfigError("ratio must be in [0, 1)")
        if value == "boom":
            raise RuntimeError("kaput")
        progress(__import__("engine").ProgressEvent("stage", 1, 2, "half"))
        return value

    wrapped = guarded(handler)
    params = list(inspect.signature(wrapped).parameters.values())
    assert [p.name for p in params] == ["session", "value", "progress", "request"]
    assert isinstance(params[2].default, gr.Progress) and wrapped.__annotations__["request"] is gr.Request
    seen = []
    assert wrapped(None, "ok", lambda p, desc=None: seen.append((p, desc))) == "ok"
    assert seen == [((1, 2), "stage: half")]
    with pytest.raises(gr.Error, match=r"ratio must be in \[0, 1\)"):
        wrapped(None, "bad", lambda *a, **k: None)
    with pytest.raises(gr.Error, match="Unexpected error.*kaput.*session is intact"):
        wrapped(None, "boom", lambda *a, **k: None)


def test_app_builds_with_named_endpoints_and_one_heavy_queue():
    from ui import build_app

    app = build_app(preload_demo=False)
    fns = {fn.api_name: fn for fn in app.fns.values() if fn.api_name}
    for name in ("load_model", "analyze", "preview_plan", "compress", "perplexity", "zeroshot", "speed", "chat",
                 "save", "recipe", "push", "stop_compress"):
        assert name in fns, name
    heavy = [fns[n] for n in ("load_model", "analyze", "compress", "perplexity", "chat", "save", "push")]
    assert {fn.concurrency_id for fn in heavy} == {"heavy"} and {fn.concurrency_limit for fn in heavy} == {1}
    assert fns["stop_compress"].concurrency_limit is None  # Stop never waits behind the job it stops
    for fn in app.fns.values():  # a job's progress and a failure's red mark go on its job line, never on outputs
        if fn.show_progress != "hidden":
            on = {block._id for block in fn.show_progress_on or []}
            assert on and not on & {block._id for block in fn.outputs}, fn.api_name or fn.name


def test_presentation_mode_is_a_browser_only_toggle_the_stylesheet_reads():
    from ui import build_app, presets
    from ui.app import PRESENT_JS

    app = build_app(preload_demo=False)
    toggle = [fn for fn in app.fns.values() if any(getattr(b, "elem_id", None) == "present" for b in fn.inputs)]
    assert len(toggle) == 1 and toggle[0].fn is None and toggle[0].js == PRESENT_JS  # nothing recomputed
    css = open(presets.css_path()).read()
    assert "'present'" in PRESENT_JS and ".present .js-plotly-plot" in css and "#tab-compress-button" in css


def test_a_failed_card_preview_or_push_is_a_toast_and_keeps_what_the_export_tab_showed(compressed):
    """Neither returns anything on failure (so gradio leaves the shown card and push status as they were):
    the message says what to do."""
    import gradio as gr

    from ui.wiring import guarded

    shown = hx.card(compressed, "me/tiny-slice")
    with pytest.raises(gr.Error, match="no compressed model in this session yet"):
        guarded(hx.card)(Session(), "me/x")
    with pytest.raises(gr.Error, match="repo"):
        guarded(hx.card)(compressed, "not a repo id")
    with pytest.raises(gr.Error, match="Paste a Hugging Face access token"):
        guarded(hx.push)(compressed, "me/tiny-slice", "", True, lambda *a, **k: None)
    assert hx.card(compressed, "me/tiny-slice") == shown  # the session's result is as it was


# --- recovery, presets with measured quality, the 2x warning (issue 12) -----------

HEAL = ("lora", 3, None, "", 4, ["attention", "mlp"], hc.SAME_TEXT, 8, 32)  # the recovery controls, in order


def test_recovery_controls_read_blanks_and_refuse_bad_values():
    spec = hc.recovery_spec(*HEAL)
    assert spec == RecoverySpec(kind="lora", steps=3, minutes=None, lr=None, rank=4, groups=["attention", "mlp"],
                                source=None, nsamples=8, seqlen=32)
    assert hc.recovery_spec("full", "", "2.5", "1e-4", 4, ["mlp"], "alpaca-chat", 8, 32) == RecoverySpec(
        kind="full", steps=None, minutes=2.5, lr=1e-4, rank=4, groups=["mlp"], source="alpaca-chat", nsamples=8,
        seqlen=32)  # blank steps: no step bound
    assert hc.recovery_spec(*HEAL, base=RecoverySpec(hidden_weight=0.5, seed=3)).hidden_weight == 0.5
    assert hc.recovery_spec("none", None, None, "", None, [], "", None, None) == RecoverySpec()  # off: not read
    assert hc.recovery_spec(*hc.recovery_values(spec)) == spec  # the controls show a spec back as it is
    with pytest.raises(ConfigError, match="recovery steps must be an integer >= 1"):
        hc.recovery_spec("lora", 0, None, "", 4, ["mlp"], "", 8, 32).check()  # 0 is no longer "off"
    with pytest.raises(ConfigError, match="lr must be a number"):
        hc.recovery_spec("lora", 3, None, "fast", 4, ["mlp"], "", 8, 32)
    with pytest.raises(ConfigError, match="steps must be a whole number"):
        hc.recovery_spec("lora", 2.5, None, "", 4, ["mlp"], "", 8, 32)


@pytest.mark.parametrize("field, value, match", [
    ("steps", "1e30", r"Recovery steps must be a whole number from 1 to 100,000"),
    ("minutes", "1e30", r"Recovery minutes must be a number from 0 to 10080"),
    ("rank", 1e30, r"LoRA rank must be a whole number from 1 to 1,024"),
    ("nsamples", 10**9, r"Recovery samples must be a whole number from 1 to 10,000"),
    ("seqlen", 4096, r"Recovery tokens per sample .* from 8 to 2,048 .*the model takes 2,048 positions"),
])
def test_a_huge_recovery_size_is_refused_before_anything_runs(session, field, value, match):
    """A recovery bounded only by a huge step count or time would run until Stop: refused in one line."""
    heal = dict(zip(hc.RECOVERY_FIELDS, HEAL)) | {field: value}
    with pytest.raises(ConfigError, match=match):
        hc.run(session, "slicegpt", {}, 0.25, "uniform", None, *CALIB, [], recovery=hc.recovery_spec(**heal))
    assert session.run is None


def test_compress_with_recovery_reports_the_stage_and_draws_the_loss_curve(session):
    events = []
    view = hc.run(session, "fasp", {}, 0.3, "uniform", None, *CALIB, [], events.append,
                  recovery=hc.recovery_spec(*HEAL))
    heal = [e for e in events if e.stage == "recovery"]
    assert heal and (heal[-1].step, heal[-1].total) == (3, 3) and "loss" in heal[-1].message
    report = session.result.plots["recovery"]
    curve = view.recovery.data[0]
    assert list(curve.x) == [1, 2, 3] and list(curve.y) == report["losses"] and len(report["losses"]) == 3
    assert "Recovery (lora)" in view.recovery.layout.title.text and "3 steps" in view.recovery.layout.title.text
    assert "**Recovery:** lora" in view.card and "3 steps" in view.card
    assert session.run.recipe["recovery"]["kind"] == "lora" and "lora heal" in session.run.label
    plain = hc.run(session, "fasp", {}, 0.3, "uniform", None, *CALIB, [])
    assert not plain.recovery.data and "Recovery was off" in plain.recovery.layout.annotations[0].text
    assert "**Recovery:**" not in plain.card


def test_without_recovery_a_method_shows_its_own_training_curve(session, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMLAB_CACHE", str(tmp_path))  # PruneNet stores its policy there
    view = hc.run(session, "prunenet", {"episodes": 3}, 0.3, "uniform", None, *CALIB, [])
    rewards = session.result.plots["policy reward"]["curve"]
    assert list(view.recovery.data[0].y) == rewards and len(rewards) == 3
    assert "mean reward per training episode" in view.recovery.layout.title.text
    assert not view.method.data  # the curve is drawn once, in the curve slot


@pytest.mark.parametrize("method, charts", [
    ("dotresize", {"merge map: transport cost": ("merge map", "transport_cost"),
                   "merge map: sources mean": ("merge map", "sources_mean")}),
    ("olica", {"query/key rank": ("query/key rank", None), "value rank": ("value rank", None)}),
    ("modegpt", {"kept RoPE pairs": ("kept RoPE pairs", None), "value rank": ("value rank", None)}),
])
def test_a_methods_own_plots_are_drawn_from_its_result(session, method, charts):
    """Each method's ``result.plots`` is drawn by shape alone (no method-specific UI code): one chart per
    per-layer series, one per numeric field of a list of dicts (DOTResize's merge map)."""
    view = hc.run(session, method, {}, 0.3, "uniform", None, *CALIB, [])
    plots = session.result.plots
    titles = [a.text for a in view.method.layout.annotations]
    for title, (key, field) in charts.items():
        expected = [row[field] for row in plots[key]] if field else plots[key]
        trace = view.method.data[titles.index(title)]
        assert list(trace.y) == expected and list(trace.x) == list(range(len(expected)))
    layers = session.lm.model.config.num_hidden_layers
    axes = {view.method.layout[k].title.text for k in view.method.layout if k.startswith("xaxis")}
    # per-layer SliceGPT-style bases sit at every residual point: 2 per layer, then the output
    assert axes == ({"residual point (before each half, then the output)"} if method == "dotresize" else {"layer"})
    assert len(expected) == (2 * layers + 1 if method == "dotresize" else layers)
    assert "What the method measured" in view.method.layout.title.text
    assert all(view.method.layout[k].dtick == 1 for k in view.method.layout if k.startswith("xaxis"))


def test_method_plots_are_read_by_shape():
    plots = {"compensation": {"ranks": {"mlp": [4, 8]}, "remaining_error": {"mlp": [0.5, None]}},
             "spectra": [[100.0, 1.0, 1e-3], [50.0, 2.0, 1e-4]], "reward": {"curve": [1.0, 2.0], "title": "R",
                                                                            "x_label": "episode"},
             "note": "text is skipped", "flags": [True, False]}
    panels = {p.title: p for p in figures.method_panels(plots)}
    assert set(panels) == {"compensation: ranks: mlp", "compensation: remaining error: mlp", "spectra", "R"}
    assert panels["spectra"].kind == "grid" and panels["R"].kind == "curve" and panels["R"].x_label == "episode"
    fig = figures.method_plots(plots)
    heat = next(t for t in fig.data if t.type == "heatmap")
    assert heat.z[0][0] == pytest.approx(2.0) and heat.z[1][2] == pytest.approx(-4.0)  # log10: spans 1e6
    assert figures.method_plots({"note": "x"}) is None


def test_the_compensation_controls_set_a_budget_in_parameters(session):
    from engine import CompensationSpec, compensation_plan

    spec = hc.compensation_spec(0.05, "both")
    assert spec == CompensationSpec(share=0.05, halves="both") and not hc.compensation_spec("", "mlp").enabled
    ranked = CompensationSpec(rank=8)  # a preset sized by rank stays while the budget control is left at 0
    assert hc.compensation_spec(0, "mlp", base=ranked) is ranked and hc.compensation_spec(0.1, "mlp", ranked).share
    with pytest.raises(ConfigError, match="Compensation budget must be a number"):
        hc.compensation_spec("lots", "mlp")
    plain = hc.run(session, "fasp", {}, 0.3, "uniform", None, *CALIB, [])
    plain_total = session.result.accounting.params_total
    view = hc.run(session, "fasp", {}, 0.3, "uniform", None, *CALIB, [], compensation=spec)
    added = compensation_plan(session.lm, spec)[1]
    assert added > 0 and session.result.accounting.params_total == plain_total + added
    assert session.run.recipe["compensation"] == {"rank": 0, "halves": "both", "share": 0.05, "damping": "gcv"}
    assert view.card != plain.card and hc.recipe_controls(session.result.recipe).compensation == [0.05, "both"]


SMALL_COUNT = VocabularySpec(tokens=4000, seqlen=64)  # what the controls leave to the preset: a quick count


@pytest.mark.parametrize("keep", [-1, 2.5, None, "lots", float("nan")])
def test_a_bad_count_of_tokens_to_keep_is_refused_naming_the_control(keep):
    with pytest.raises(ConfigError, match="Tokens to keep must be a whole number of at least 0"):
        hc.vocabulary_spec(keep, hc.SAME_TEXT)


def test_the_vocabulary_controls_build_the_recipes_vocabulary(session):
    spec = hc.vocabulary_spec(285, hc.SAME_TEXT, base=SMALL_COUNT)
    assert spec == VocabularySpec(keep=285, source=None, tokens=4000, seqlen=64)
    assert hc.vocabulary_spec("300", "alpaca-chat").source == "alpaca-chat"
    assert hc.vocabulary_spec(0, "no-such-text") == VocabularySpec()  # off: the text is not read
    assert hc.vocabulary_spec(*hc.vocabulary_values(spec), base=SMALL_COUNT) == spec  # shown back as it is
    recipe = hc.make_recipe(session, "fasp", {}, 0.3, "uniform", None, CalibrationSpec(*CALIB), [], vocabulary=spec)
    assert recipe.vocabulary == spec and recipe.label().endswith("+ vocabulary 285")
    too_many = hc.vocabulary_spec(321, hc.SAME_TEXT, base=SMALL_COUNT)
    refused = hc.size_from_controls(session, "fasp", {}, 0.3, "uniform", None, *CALIB, [], vocabulary=too_many)
    assert "Cannot run as set" in refused and "Tokens to keep must be a whole number from 0 to 320 (got 321)" in refused
    assert "the tokenizer has 320 tokens" in refused
    with pytest.raises(ConfigError, match="Tokens to keep .* from 0 to 320"):
        hc.run(session, "fasp", {}, 0.3, "uniform", None, *CALIB, [], vocabulary=too_many)
    with pytest.raises(ConfigError, match="vocabulary source"):
        hc.run(session, "fasp", {}, 0.3, "uniform", None, *CALIB, [], vocabulary=hc.vocabulary_spec(285, "nosuch:x"))
    assert session.run is None  # nothing ran


def test_a_trimmed_vocabulary_is_sized_before_the_run_said_after_it_and_replayed(session, tmp_path):
    from engine import Recipe
    from ui import presets

    spec = hc.vocabulary_spec(285, hc.SAME_TEXT, base=SMALL_COUNT)
    plain = hc.size_from_controls(session, "fasp", {}, 0.3, "uniform", None, *CALIB, [])
    size = hc.size_from_controls(session, "fasp", {}, 0.3, "uniform", None, *CALIB, [], vocabulary=spec)
    assert "Vocabulary" not in plain and size != plain
    view = hc.run(session, "fasp", {}, 0.3, "uniform", None, *CALIB, [], vocabulary=spec)
    result = session.result
    kept = result.plots["vocabulary"]["kept"]
    assert result.plots["vocabulary"] == {"kept": kept, "original": 320} and 285 <= kept < 320
    assert text.m(result.accounting.params_total) in size  # the planned size was the run's, trimming counted
    assert f"**Vocabulary:** keeps {kept:,} of 320 tokens" in size and f"keeps {kept:,} of 320 tokens (" in view.card
    assert f"the most used in {CALIB[0]}" in view.card  # the calibration's text: the counted text's default
    assert figures.method_panels({"vocabulary": result.plots["vocabulary"]}) == []  # not a per-layer chart
    assert view.method is not None  # the method's charts are drawn beside it
    assert session.run.recipe["vocabulary"]["keep"] == 285

    (tmp_path / "slimlab.json").write_text(json.dumps({"recipe": session.run.recipe}))
    replayed = presets.Preset.read(tmp_path / "slimlab.json")  # a saved run's recipe, uploaded to replay
    shown = hc.use_preset(session, replayed)
    assert shown.controls.vocabulary == [285, hc.SAME_TEXT] and "vocabulary 285" in shown.card
    assert f"keeps {kept:,} of 320 tokens" in shown.size
    preset = presets.Preset("trimmed", Recipe(method="fasp", vocabulary=VocabularySpec(keep=300, source="alpaca-chat")))
    assert hc.recipe_controls(preset.recipe).vocabulary == [300, "alpaca-chat"]  # a preset shows its trimming


def test_stop_during_recovery_keeps_the_previous_result(session):
    first = hc.run(session, "fasp", {}, 0.3, "uniform", None, *CALIB, [])
    previous, record = session.result, session.run
    original = _state(session.lm.model)

    def press_stop(event):  # Stop, pressed once the distillation has taken its first step
        if event.stage == "recovery" and event.step == 1:
            session.stop()

    with pytest.raises(Cancelled, match="unchanged"):
        hc.run(session, "fasp", {}, 0.4, "uniform", None, *CALIB, [], press_stop, recovery=hc.recovery_spec(*HEAL))
    assert session.result is previous and session.run is record and [r.run_id for r in session.history] == [1]
    assert hc.card(session) == first.card  # the result card still shows the previous run
    assert all(torch.equal(original[k], v) for k, v in session.lm.model.state_dict().items())


def test_the_default_calibration_is_chats_for_a_chat_model(session):
    from types import SimpleNamespace

    from ui.app import _after_model

    chats = "wikitext2:validation+alpaca-chat"
    assert hc.default_calibration_source(session) == chats  # the tiny tokenizer has a chat template
    assert _after_model(session)[3] == chats  # Analyze's source (the Compress tab opens on a recipe with it)
    assert hc.starting_point(session).controls.calibration["source"] == chats
    no_template = Session(lm=SimpleNamespace(tokenizer=SimpleNamespace(chat_template=None), model=None))
    assert hc.default_calibration_source(no_template) == "wikitext2:validation"


def test_the_nonsense_warning_rule():
    from engine import NONSENSE_WARNING, nonsense_warning

    assert nonsense_warning(20.0, 40.0) is None and nonsense_warning(20.0, 25.0) is None
    warned = nonsense_warning(20.0, 41.0)
    assert warned.startswith(NONSENSE_WARNING) and "41.0 vs 20.0" in warned and "2.0×" in warned
    assert NONSENSE_WARNING == ("This model is likely to produce nonsense; try a smaller ratio, a chat calibration "
                                "or recovery.")
    assert nonsense_warning(None, 100.0) is None and nonsense_warning(20.0, None) is None
    assert nonsense_warning(20.0, float("nan")) and nonsense_warning(20.0, float("inf"))


def test_the_warning_shows_in_evaluate_and_on_the_card_when_ppl_more_than_doubles(session):
    hc.run(session, "slicegpt", {"variant": "shared"}, 0.25, "uniform", None, *CALIB, [])
    protocol = {"dataset": "wikitext2", "seqlen": 64, "windows": 2}
    session.original_evals["perplexity"] = protocol | {"ppl": 20.0}
    session.run.evals["perplexity"] = protocol | {"ppl": 39.0}
    assert he.view(session).warning == "" and "nonsense" not in hc.card(session)
    session.run.evals["perplexity"]["ppl"] = 45.0
    assert "likely to produce nonsense" in he.view(session).warning
    assert "likely to produce nonsense" in hc.card(session)
    session.run.evals["perplexity"]["windows"] = 4  # measured another way: not compared
    assert he.view(session).warning == "" and "nonsense" not in hc.card(session)


MEASURED = {"params_fraction": 0.8, "ppl": 25.1, "dense_ppl": 20.4, "chat_hits": 15, "chat_total": 24,
            "dense_chat_hits": 17, "lambada": 0.31, "dense_lambada": 0.352, "seconds": 412, "machine": "2-core vm"}
EXAMPLES = [{"prompt": "What is the capital of France?", "dense": "The capital of France is Paris.",
             "compressed": "Paris is the\ncapital."}]


@pytest.fixture
def preset_dir(tmp_path, monkeypatch):
    """assets/ with four presets in recipes/: two demo-* ones (measured) and two others."""
    from ui import presets

    base = {"method": "slicegpt", "ratio": 0.25, "calibration": dict(zip(("source", "nsamples", "seqlen", "seed"),
                                                                          CALIB))}
    files = {"alpha": base | {"name": "Alpha"}, "zeta": base | {"name": "Zeta"},
             "demo-80": base | {"name": "Demo 80%", "ratio": 0.3, "measured": MEASURED, "chat_examples": EXAMPLES,
                                "calibration": base["calibration"] | {"batch_size": 4}},
             "demo-90": base | {"name": "Demo 90%", "measured": {"ppl": 21.0, "dense_ppl": 20.0}},
             "broken": base | {"name": "Broken", "measured": {"ppl": 45.0, "dense_ppl": 20.0}}}
    (tmp_path / "recipes").mkdir()
    for stem, data in files.items():
        (tmp_path / "recipes" / f"{stem}.json").write_text(json.dumps(data))
    monkeypatch.setattr(presets, "ASSETS", tmp_path)
    presets.all_presets.cache_clear()
    yield tmp_path / "recipes"
    presets.all_presets.cache_clear()  # the next caller reads the real assets again


def test_demo_presets_come_first_the_larger_first(preset_dir):
    from ui import presets

    assert list(presets.all_presets()) == ["Demo 90%", "Demo 80%", "Alpha", "Broken", "Zeta"]
    assert list(presets.recipe_presets()) == list(presets.all_presets())
    assert presets.all_presets()["Demo 80%"].measured == MEASURED
    assert presets.all_presets()["Alpha"].measured == {} and presets.all_presets()["Alpha"].chat_examples == []


def test_a_preset_measured_on_held_out_questions_and_zero_shot_says_so():
    """Shipped presets carry the held-out chat set's hits and the zero-shot mean beside the dense model's:
    the card shows both, so a reader sees whether the chat hits were tuned to their questions."""
    from ui import text

    line = text.measured_line(MEASURED | {"chat_holdout_hits": 9, "chat_holdout_total": 30,
                                          "dense_chat_holdout_hits": 14, "zeroshot": 0.44, "dense_zeroshot": 0.518})
    assert ("chat 15/24 vs 17/24, held-out chat 9/30 vs 14/30, LAMBADA 31.0% vs 35.2%, zero-shot 44.0% vs 51.8%, "
            "0.80× params") in line
    assert "held-out" not in text.measured_line(MEASURED) and "zero-shot" not in text.measured_line(MEASURED)


def test_a_picked_preset_shows_its_measured_quality_and_its_stored_answers(preset_dir):
    from ui import presets

    s = Session()
    found = presets.all_presets()
    view = hc.use_preset(s, found["Demo 80%"])
    assert s.preset is found["Demo 80%"] and view.controls.ratio == 0.3 and view.controls.method == "slicegpt"
    assert ("measured: ppl 25.1 vs dense 20.4 (1.23×), chat 15/24 vs 17/24, LAMBADA 31.0% vs 35.2%, 0.80× params, "
            "412 s on 2-core vm") in view.card
    assert "nonsense" not in view.card
    assert "What is the capital of France?" in view.chat_examples and "Paris is the capital." in view.chat_examples
    assert "The capital of France is Paris." in view.chat_examples
    only_ppl = hc.use_preset(s, found["Demo 90%"])
    assert "measured: ppl 21.0 vs dense 20.0 (1.05×)" in only_ppl.card
    assert "chat" not in only_ppl.card and "LAMBADA" not in only_ppl.card and only_ppl.chat_examples == ""
    assert "measured" not in hc.use_preset(s, found["Alpha"]).card
    assert "likely to produce nonsense" in hc.use_preset(s, found["Broken"]).card  # its own figures: 2.25x
    cleared = hc.use_preset(s, None)
    assert s.preset is None and cleared.controls is None and cleared.card == cleared.chat_examples == ""


def test_a_bad_measured_field_names_the_preset_file(preset_dir):
    from ui import presets

    (preset_dir / "bad.json").write_text(json.dumps({"method": "slicegpt", "measured": {"ppl": "low"}}))
    with pytest.raises(ConfigError, match=r"bad.json: 'measured' must map"):
        presets.load_presets(preset_dir)
    (preset_dir / "bad.json").write_text(json.dumps({"method": "slicegpt", "chat_examples": [{"prompt": "hi"}]}))
    with pytest.raises(ConfigError, match=r"bad.json: 'chat_examples' must be a list"):
        presets.load_presets(preset_dir)


def test_a_run_of_a_preset_unchanged_quotes_its_measured_quality(session, preset_dir):
    from ui import presets

    preset = presets.all_presets()["Demo 80%"]
    hc.use_preset(session, preset)
    c = hc.recipe_controls(preset.recipe)
    calib = [c.calibration[k] for k in ("source", "nsamples", "seqlen", "seed")]

    def run(ratio):
        return hc.run(session, c.method, c.method_params, ratio, c.schedule, c.schedule_params, *calib, [],
                      recovery=hc.recovery_spec(*c.recovery, base=preset.recipe.recovery))

    same = run(c.ratio)
    assert "the preset **Demo 80%**, unchanged" in same.card and "measured: ppl 25.1 vs dense 20.4" in same.card
    assert session.run.recipe["calibration"]["batch_size"] == 4  # no control for it: the preset's
    changed = run(0.2)
    assert "measured: ppl" not in changed.card and "this run differs, so they are not quoted" in changed.card


def test_same_run_compares_plans_when_both_have_one_and_everything_else():
    from dataclasses import replace

    from engine import Plan, Recipe

    a = Recipe(method="slicegpt", ratio=0.25, plan=Plan("uniform", 0.25, [0.25] * 3))
    b = Recipe(method="slicegpt", ratio=0.25, schedule="manual", plan=Plan("manual", 0.25, [0.25] * 3))
    assert hc.same_run(a, b)  # the schedule that made a plan is only its provenance
    assert not hc.same_run(a, replace(b, plan=Plan("manual", 0.25, [0.2, 0.3, 0.25])))
    assert hc.same_run(Recipe(), Recipe(model="other/model", versions={}))
    assert not hc.same_run(Recipe(), Recipe(ratio=0.3)) and not hc.same_run(Recipe(), Recipe(schedule="block-influence"))
    assert not hc.same_run(Recipe(), Recipe(recovery=RecoverySpec(kind="lora")))
    assert not hc.same_run(Recipe(), Recipe(calibration=replace(Recipe().calibration, batch_size=4)))


def test_preset_figures_apply_only_on_their_model_and_with_a_step_bound():
    from dataclasses import replace

    from engine import Recipe
    from ui.presets import Preset

    recipe = Recipe(method="fasp", ratio=0.2, recovery=RecoverySpec(kind="lora", steps=3))
    preset = Preset("P", recipe, {"ppl": 30.0, "machine": "2-core vm", "protocol": {"model": "demo"}})
    assert hc._preset_measured(preset, recipe, "demo") is preset
    assert hc._preset_measured(preset, recipe, "other/model") is None  # measured on another model
    timed = replace(recipe, recovery=replace(recipe.recovery, minutes=2.0))
    assert hc._preset_measured(replace(preset, recipe=timed), timed, "demo") is None  # a time bound: other work
    assert "(model demo, on 2-core vm)" in hc._not_quoted(preset)


def test_a_long_placeholder_message_is_wrapped_to_fit_a_half_width_panel():
    from ui.figures import PLACEHOLDER_CHARS, placeholder
    from ui.handlers.compress import NO_LIVE

    text = placeholder(NO_LIVE).layout.annotations[0].text
    lines = text.split("<br>")
    assert len(lines) > 1 and all(len(line) <= PLACEHOLDER_CHARS for line in lines)
    assert " ".join(lines) == " ".join(NO_LIVE.split())  # nothing lost, only broken at spaces
