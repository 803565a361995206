"""The CLI: every command prints one JSON object as its last line with --json."""
import json
import math
import re
import time
from pathlib import Path

import pytest
import torch

from engine.cli import build_parser, main
from engine.commands.compress import recipe_from_args
from engine.recipes import CalibrationSpec, CompensationSpec, Recipe
from engine.schedules import Plan

PRESETS = Path(__file__).resolve().parents[1] / "assets" / "recipes"


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_info_json(tiny_dirs, capsys):
    assert main(["info", str(tiny_dirs["llama"]), "--json", "--quiet"]) == 0
    info = _last_json(capsys)
    assert info["num_layers"] == 3 and info["hidden_size"] == 64
    assert info["tied_embeddings"] is True
    assert info["params_total"] == info["params_non_embedding"] + info["params_embedding"]
    assert info["bytes_on_disk"] > 0


def test_ppl_matches_a_direct_computation(tiny_dirs, data_dir, capsys):
    from engine.data import eval_windows, load_text
    from engine import load_model

    assert main(["ppl", str(tiny_dirs["qwen2"]), "--seqlen", "64", "--max-windows", "3", "--json", "--quiet"]) == 0
    got = _last_json(capsys)
    lm = load_model(str(tiny_dirs["qwen2"]), device="cpu")
    windows = eval_windows(lm.tokenizer, load_text("wikitext2:test"), 64, 3)
    with torch.no_grad():
        losses = [lm.model(w[None], labels=w[None]).loss.item() for w in windows]
    assert got["windows"] == 3 and got["tokens"] == 3 * 63
    assert got["ppl"] == pytest.approx(math.exp(sum(losses) / 3), rel=1e-4)
    assert got["tokens_per_s"] > 0


def test_compress_save_and_ppl_of_the_result(tiny_dirs, data_dir, tmp_path, capsys):
    out = tmp_path / "sliced"
    args = ["compress", str(tiny_dirs["llama"]), "--ratio", "0.25", "--nsamples", "4", "--seqlen", "32",
            "--out", str(out), "--json", "--quiet"]
    assert main(args) == 0
    summary = _last_json(capsys)
    assert summary["out"] == str(out)
    assert summary["widths"]["attention"] == [48, 48, 48]
    assert summary["params_added"] > 0 and "peak_rss_mb" in summary and summary["seconds"] > 0
    assert main(args) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    assert main(["ppl", str(out), "--seqlen", "32", "--max-windows", "2", "--json", "--quiet"]) == 0
    assert math.isfinite(_last_json(capsys)["ppl"])


def test_recipe_replays_bit_for_bit(tiny_dirs, data_dir, tmp_path, capsys):
    from engine import load_compressed

    first = tmp_path / "first"
    main(["compress", str(tiny_dirs["llama"]), "--ratio", "0.3", "--schedule", "layer-redundancy",
          "--slicing-base", "0.1", "--nsamples", "4", "--seqlen", "32", "--seed", "7", "--out", str(first), "--quiet"])
    second = tmp_path / "second"
    assert main(["compress", str(tiny_dirs["llama"]), "--recipe", str(first / "slimlab.json"), "--out", str(second),
                 "--quiet"]) == 0
    a, b = load_compressed(first, device="cpu"), load_compressed(second, device="cpu")
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_errors_exit_2_with_a_message(capsys):
    assert main(["info", "./does/not/exist"]) == 2
    assert "No such file or folder" in capsys.readouterr().err


@pytest.fixture
def no_load(monkeypatch):
    """Any model load fails the test: arguments must be refused before it."""
    def load_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("engine.commands.common.load_model", load_model)


@pytest.mark.parametrize("argv, match", [
    (["compress", "demo", "--ratio", "1.2"], r"ratio must be in \[0, 1\)"),
    (["compress", "some/model.gguf", "--ratio", "1.2"], r"ratio must be in \[0, 1\)"),
    (["compress", "./a/checkpoint/folder", "--ratio", "-0.1"], r"ratio must be in \[0, 1\)"),
    (["compress", "demo", "--method", "nope"], "Unknown method 'nope'"),
    (["compress", "demo", "--param", "variant=diagonal"], "variant must be one of"),
    (["compress", "demo", "--param", "variant"], "--param takes NAME=VALUE"),
    (["compress", "demo", "--schedule", "zigzag"], "Unknown schedule 'zigzag'"),
    (["compress", "demo", "--slicing-base", "0.1"], "Schedule 'uniform' has no parameter"),
    (["compress", "demo", "--schedule", "layer-redundancy", "--slicing-base", "0.3"], "must not exceed the target"),
    (["compress", "demo", "--schedule", "block-influence", "--schedule-param", "temperature=0"],
     r"temperature must be in \[0.0001"),
    (["compress", "demo", "--schedule", "manual:/no/such.json"], "Schedule file not found"),
    (["compress", "demo", "--nsamples", "0"], "calibration nsamples must be an integer >= 1"),
    (["compress", "demo", "--calib", "tweets"], "Unknown text source 'tweets'"),
    (["compress", "demo", "--recipe", "/no/such/recipe.json"], "Recipe file not found"),
    (["compress", "demo", "--compensation", "5%"], r"compensation takes SHARE\[:mlp\|attention\|both\]"),
    (["compress", "demo", "--compensation", "0.05:ffn"], "compensation halves must be one of"),
    (["compress", "demo", "--vocabulary", "-5"], "vocabulary keep must be an integer >= 0"),
    (["compress", "demo", "--vocabulary-tokens", "1000"], "add --vocabulary KEEP"),
    (["compress", "demo", "--vocabulary", "30000", "--vocabulary-source", "tweets"], "vocabulary source: Unknown"),
    (["ppl", "demo", "--seqlen", "0"], "--seqlen takes an integer >= 2"),
    (["ppl", "demo", "--dataset", "tweets"], "--dataset: Unknown text source"),
    (["ppl", "demo", "--max-windows", "0"], "--max-windows takes an integer >= 1"),
    (["eval", "demo", "--limit", "0"], "--limit takes an integer >= 1"),
    (["eval", "demo", "--ppl", "--ppl-dataset", "tweets"], "--ppl-dataset: Unknown text source"),
    (["eval", "demo", "--bench", "--repeats", "0"], "--repeats takes an integer >= 1"),
    (["bench", "demo", "--batch-sizes", "0,4"], "--batch-sizes takes positive integers"),
    (["bench", "demo", "--threads", "0"], "--threads takes an integer >= 1"),
    (["info", "demo", "--dtype", "float8"], "Unknown dtype 'float8'"),
    (["compress", "demo", "--dtype", "half-ish"], "Unknown dtype 'half-ish'"),
    (["eval", "demo", "--dtype", "int4", "--ppl"], "Unknown dtype 'int4'"),
    (["eval", "demo", "--compare", "./no/such/model", "--ppl"], "No such file or folder: './no/such/model'"),
    (["eval", "./no/such/base", "--compare", "demo", "--ppl"], "No such file or folder: './no/such/base'"),
    (["bench", "demo", "--compare", "/no/such/model.gguf"], "No such file or folder"),
])
def test_bad_arguments_fail_in_one_line_before_any_load(argv, match, no_load, capsys):
    t = time.perf_counter()
    assert main(argv) == 2
    seconds = time.perf_counter() - t
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(match, err[0]), err[0]
    assert seconds < 5


def test_eval_refuses_an_unwritable_report_or_a_compared_non_model_before_loading(tmp_path, no_load, capsys):
    a_file = tmp_path / "report"
    a_file.write_text("not a folder")
    not_a_model = tmp_path / "weights.bin"
    not_a_model.write_text("")
    for argv, match in [(["--out", str(a_file)], "is a file; give a folder"),
                        (["--out", str(a_file / "sub")], "is not a writable folder"),
                        (["--compare", str(not_a_model)], "is a file but not a .gguf"),
                        (["--compare", str(tmp_path)], "has no config.json")]:
        t = time.perf_counter()
        assert main(["eval", "demo", "--ppl", *argv]) == 2
        assert time.perf_counter() - t < 5
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], (argv, err)


def test_a_bad_recipe_file_fails_before_loading(tmp_path, no_load, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"method": "slicegpt", "ratio": 0.25, "calibration": {"nsample": 4}}))
    assert main(["compress", "demo", "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "recipe.json" in err and "nsample" in err


def test_an_existing_out_folder_is_refused_before_loading(tmp_path, no_load, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["compress", "demo", "--out", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err


def _recipe(argv: list[str]) -> Recipe:
    return recipe_from_args(build_parser().parse_args(["compress", *argv]))


def test_flags_override_the_recipe_file_field_by_field(tmp_path):
    path = tmp_path / "slimlab.json"
    saved = Recipe(model="saved/model", method="slicegpt", method_params={"variant": "shared"}, ratio=0.3,
                   schedule="layer-redundancy", schedule_params={"slicing_base": 0.1},
                   plan=Plan("layer-redundancy", 0.3, [0.2, 0.4]), calibration=CalibrationSpec("c4", 8, 64, 3, 2))
    path.write_text(json.dumps({"recipe": saved.to_dict(), "widths": {}}))

    same = _recipe(["--recipe", str(path)])
    assert same == Recipe.from_dict(saved.to_dict())  # nothing given: the file as it is, plan included
    assert _recipe(["--recipe", str(path), "other/model"]).model == "other/model"

    tuned = _recipe(["--recipe", str(path), "--param", "damp=0.1", "--nsamples", "16"])
    assert tuned.method_params == {"variant": "shared", "damp": "0.1"}
    assert tuned.calibration == CalibrationSpec("c4", 16, 64, 3, 2) and tuned.plan == saved.plan

    rescheduled = _recipe(["--recipe", str(path), "--ratio", "0.2"])
    assert rescheduled.plan is None and rescheduled.ratio == 0.2  # the plan was made for 0.3
    assert rescheduled.schedule_params == {"slicing_base": 0.1}
    assert _recipe(["--recipe", str(path), "--slicing-base", "0.05"]).schedule_params == {"slicing_base": 0.05}

    other = _recipe(["--recipe", str(path), "--method", "fasp", "--schedule", "uniform"])
    assert (other.method, other.method_params, other.schedule, other.schedule_params, other.plan) == (
        "fasp", {}, "uniform", {}, None)
    other.validate()


def test_compensation_flag_sets_the_share_over_the_recipe_file(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(Recipe(method="fasp", compensation=CompensationSpec(rank=8)).to_dict()))
    assert _recipe(["--recipe", str(path)]).compensation == CompensationSpec(rank=8)
    assert _recipe(["--recipe", str(path), "--compensation", "0.05:both"]).compensation == \
        CompensationSpec(share=0.05, halves="both")
    assert not _recipe(["--recipe", str(path), "--compensation", "0"]).compensation.enabled


def test_without_a_recipe_the_flags_are_the_recipe():
    recipe = _recipe(["m", "--method", "fasp", "--ratio", "0.2", "--schedule", "block-influence",
                      "--schedule-param", "temperature=0.05", "--param", "parts=mlp", "--seed", "1"]).validate()
    assert (recipe.model, recipe.method, recipe.ratio, recipe.schedule) == ("m", "fasp", 0.2, "block-influence")
    assert recipe.schedule_params == {"temperature": 0.05, "max_ratio": 0.9}
    assert recipe.method_params["parts"] == "mlp" and recipe.calibration == CalibrationSpec(seed=1)
    assert _recipe([]) == Recipe(versions=_recipe([]).versions)  # no flags: the defaults


@pytest.mark.parametrize("command, key", [("methods", "needs_calibration"), ("schedules", "needs_scores")])
def test_listings_come_from_the_registries(command, key, capsys):
    from engine.methods import available_methods
    from engine.schedules import available_schedules

    registry = available_methods() if command == "methods" else available_schedules()
    assert main([command, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    listed = json.loads(out[-1])[command]
    assert [e["name"] for e in listed] == list(registry)
    for entry in listed:
        assert entry["params"] == registry[entry["name"]].schema() and key in entry
        assert any(line.startswith(f"{entry['name']}  {entry['label']}") for line in out)
    assert main(["schedules"]) == 0
    assert "    slicing_base = None  (float in [0.0, 0.99])" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["slicegpt-25-shared", "slicegpt-25-layer-redundancy"])
def test_a_shipped_preset_replays_on_a_model_folder(preset, tiny_dirs, data_dir, tmp_path, capsys):
    out = tmp_path / preset
    assert main(["compress", str(tiny_dirs["llama"]), "--recipe", str(PRESETS / f"{preset}.json"),
                 "--nsamples", "4", "--seqlen", "32", "--out", str(out), "--json", "--quiet"]) == 0
    summary = _last_json(capsys)
    preset_recipe = Recipe.read(PRESETS / f"{preset}.json")
    saved = Recipe.read(out / "slimlab.json")
    assert saved.method_params["variant"] == preset_recipe.method_params["variant"]
    assert saved.schedule == preset_recipe.schedule and saved.ratio == preset_recipe.ratio
    assert saved.calibration == CalibrationSpec("wikitext2:validation", 4, 32, 42, 8)
    assert saved.model == str(tiny_dirs["llama"]) and saved.plan is not None and len(saved.plan.ratios) == 3
    assert set(saved.versions) == {"slimlab", "torch", "transformers"}
    assert summary["out"] == str(out)


@pytest.mark.parametrize("argv, match", [
    (["--recovery", "magic"], "--recovery takes none, lora, full"),
    (["--recovery", "lora", "--recovery-steps", "0"], "recovery steps must be an integer >= 1"),
    (["--recovery", "lora", "--recovery-steps", "ten"], "recovery steps must be a whole number or none"),
    (["--recovery", "lora", "--recovery-steps", "none"], "recovery needs a bound"),
    (["--recovery", "full", "--recovery-minutes", "soon"], "recovery minutes must be a number or none"),
    (["--recovery", "lora", "--recovery-minutes", "-2"], "recovery minutes must be a positive number"),
    (["--recovery", "lora", "--recovery-lr", "0"], "recovery lr must be a positive number"),
    (["--recovery", "lora", "--recovery-rank", "0"], "recovery rank must be an integer >= 1"),
    (["--recovery", "lora", "--recovery-groups", "attention+eyes"], "recovery groups must be a non-empty list"),
    (["--recovery", "lora", "--recovery-source", "tweets"], "recovery source: Unknown text source 'tweets'"),
    (["--recovery", "lora", "--recovery-nsamples", "0"], "recovery nsamples must be an integer >= 1"),
    (["--recovery", "lora", "--recovery-seqlen", "1"], "recovery seqlen must be an integer >= 2"),
    (["--recovery-steps", "50"], "--recovery-steps set.* a recovery that is off; add --recovery lora"),
    (["--recovery", "none", "--recovery-rank", "4"], "--recovery-rank set.* a recovery that is off"),
])
def test_bad_recovery_flags_fail_before_any_load(argv, match, no_load, capsys):
    assert main(["compress", "demo", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(match, err[0]), err[0]


def test_recovery_flags_override_the_recipe_file_field_by_field(tmp_path):
    from engine.recipes import RecoverySpec

    path = tmp_path / "heal.json"
    path.write_text(json.dumps({"method": "fasp", "ratio": 0.2, "recovery": {
        "kind": "full", "steps": 40, "groups": ["mlp"], "hidden_weight": 0.5, "source": "alpaca-chat"}}))
    assert _recipe(["--recipe", str(path)]).recovery == RecoverySpec(kind="full", steps=40, groups=["mlp"],
                                                                     hidden_weight=0.5, source="alpaca-chat")
    tuned = _recipe(["--recipe", str(path), "--recovery", "lora", "--recovery-steps", "none", "--recovery-minutes",
                     "2.5", "--recovery-rank", "8", "--recovery-groups", "attention+mlp", "--recovery-lr", "1e-3",
                     "--recovery-nsamples", "16", "--recovery-seqlen", "128"]).validate()
    assert tuned.recovery == RecoverySpec(kind="lora", steps=None, minutes=2.5, lr=1e-3, rank=8,
                                          groups=["attention", "mlp"], hidden_weight=0.5, source="alpaca-chat",
                                          nsamples=16, seqlen=128)  # hidden_weight and source: the file's
    assert _recipe(["--recipe", str(path), "--recovery", "none"]).recovery.enabled is False
    flags_only = _recipe(["--recovery", "lora", "--recovery-source", "wikitext2:train"]).validate().recovery
    assert flags_only == RecoverySpec(kind="lora", source="wikitext2:train")
    assert _recipe([]).recovery == RecoverySpec()  # no flags: off


@pytest.mark.parametrize("recovery, streamed", [(None, True), ({"kind": "lora"}, True),
                                                ({"kind": "full", "hidden_weight": 0.5}, False)])
def test_compress_streams_the_folder_unless_recovery_needs_it_in_memory(recovery, streamed, monkeypatch, tmp_path):
    """Recovery stores the original's outputs first, so the folder streams; matching hidden states needs it whole."""
    import engine.commands.compress as command

    seen = {}

    class Loaded(Exception):
        pass

    def load(args, spec=None, stream=False):
        seen["stream"] = stream
        raise Loaded

    monkeypatch.setattr(command, "load", load)
    flags = []
    if recovery is not None:
        (tmp_path / "heal.json").write_text(json.dumps({"method": "fasp", "recovery": recovery}))
        flags = ["--recipe", str(tmp_path / "heal.json")]
    args = build_parser().parse_args(["compress", str(tmp_path), "--method", "fasp", *flags])
    with pytest.raises(Loaded):
        command.run(args)
    assert seen == {"stream": streamed}


def test_eval_chat_check_prints_hits_and_share(tiny_dirs, capsys):
    assert main(["eval", str(tiny_dirs["llama"]), "--chat-check", "--json", "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    payload = json.loads(out[-1])
    (check,) = payload["chat_check"]
    total = len(json.loads((PRESETS.parent / "chat_check.json").read_text())["questions"])
    assert check["spec"] == str(tiny_dirs["llama"]) and check["total"] == total and 0 <= check["hits"] <= total
    assert check["share"] == pytest.approx(check["hits"] / total)
    line = next(line for line in out if line.startswith("chat check"))
    assert f"{check['hits']}/{total} answers contain the expected keyword ({100 * check['share']:.0f}%" in line
    assert "zeroshot" not in payload["report"]["plots"]  # --chat-check alone runs no zero-shot tasks


def test_eval_warns_when_the_compared_ppl_more_than_doubles():
    from engine.commands.eval import warning_lines

    def entry(label, ppl, windows=2):
        return {"label": label, "perplexity": {"ppl": ppl, "windows": windows}}

    (line,) = warning_lines([entry("dense", 20.0), entry("sliced", 41.0)])
    assert line.startswith("warning: sliced: This model is likely to produce nonsense") and "2.0×" in line
    assert warning_lines([entry("dense", 20.0), entry("sliced", 40.0)]) == []  # 2x exactly: no warning
    assert warning_lines([entry("dense", 20.0)]) == [] and warning_lines([entry("a", 20.0), {"label": "b"}]) == []
