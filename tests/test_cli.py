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
from engine.recipes import CalibrationSpec, Recipe
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
    (["ppl", "demo", "--seqlen", "0"], "--seqlen takes an integer >= 2"),
    (["ppl", "demo", "--dataset", "tweets"], "--dataset: Unknown text source"),
    (["ppl", "demo", "--max-windows", "0"], "--max-windows takes an integer >= 1"),
    (["eval", "demo", "--limit", "0"], "--limit takes an integer >= 1"),
    (["eval", "demo", "--ppl", "--ppl-dataset", "tweets"], "--ppl-dataset: Unknown text source"),
    (["eval", "demo", "--bench", "--repeats", "0"], "--repeats takes an integer >= 1"),
    (["bench", "demo", "--batch-sizes", "0,4"], "--batch-sizes takes positive integers"),
    (["bench", "demo", "--threads", "0"], "--threads takes an integer >= 1"),
])
def test_bad_arguments_fail_in_one_line_before_any_load(argv, match, no_load, capsys):
    t = time.perf_counter()
    assert main(argv) == 2
    seconds = time.perf_counter() - t
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(match, err[0]), err[0]
    assert seconds < 5


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
