"""Every command fed bad values: exit code 2, one line that starts with 'error', no traceback,
and nothing loaded (the check comes before the model load, so a typo costs seconds, not minutes)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import SamplingSettings, build_plan, check_ratio
from engine.cli import main
from engine.commands import common
from engine.data import load_text
from engine.errors import ConfigError, SlimLabError
from engine.params import read_settings_file

BAD = {
    "compress": [
        ["compress", "demo", "--ratio", "1.2"], ["compress", "demo", "--ratio", "-0.1"],
        ["compress", "demo", "--ratio", "nan"], ["compress", "demo", "--ratio", "inf"],
        ["compress", "demo", "--ratio", "abc"], ["compress", "demo", "--ratio", ""],
        ["compress", "demo", "--method", "nosuch"], ["compress", "demo", "--method", ""],
        ["compress", "demo", "--schedule", "nosuch"], ["compress", "demo", "--param", "nosuch=1"],
        ["compress", "demo", "--param", "novalue"], ["compress", "demo", "--method", "fasp", "--param", "damp=-1"],
        ["compress", "demo", "--method", "fasp", "--param", "damping=banana"],
        ["compress", "demo", "--method", "fasp", "--param", "round_to=0.5"],
        ["compress", "demo", "--schedule-param", "slicing_base=2"],
        ["compress", "demo", "--nsamples", "0"], ["compress", "demo", "--nsamples", "10" * 30],
        ["compress", "demo", "--seqlen", "-5"], ["compress", "demo", "--batch-size", "0"],
        ["compress", "demo", "--calib", "nosuch:thing"], ["compress", "demo", "--calib", ""],
        ["compress", "demo", "--dtype", "float8"], ["compress", "demo", "--device", "tpu"],
        ["compress", "demo", "--recipe", "{missing}"], ["compress", "demo", "--recipe", "{malformed}"],
        ["compress", "demo", "--recipe", "{unknown_key}"], ["compress", "demo", "--recipe", "{wrong_types}"],
        ["compress", "demo", "--recipe", "{a_list}"], ["compress", "demo", "--schedule", "manual:{missing}"],
        ["compress", "demo", "--schedule", "manual:{malformed}"],
        ["compress", "demo", "--recovery", "bogus"], ["compress", "demo", "--recovery", "full", "--recovery-lr", "-1"],
        ["compress", "demo", "--recovery", "lora", "--recovery-steps", "0"],
        ["compress", "demo", "--out", "{nonempty}"],
    ],
    "ppl": [["ppl", "demo", "--seqlen", "0"], ["ppl", "demo", "--dataset", "nosuch"],
            ["ppl", "demo", "--max-windows", "-1"], ["ppl", "demo", "--dtype", "int3"]],
    "eval": [["eval", "demo", "--tasks", "nosuch"], ["eval", "demo", "--limit", "0"],
             ["eval", "demo", "--compare", "{missing}"], ["eval", "demo", "--dtype", "fp9"]],
    "bench": [["bench", "demo", "--dtype", "fp9"], ["bench", "demo", "--device", "tpu"]],
    "export": [["export", "{missing}", "--format", "gguf"], ["export", "{plain}", "--format", "gguf"],
               ["export", "{plain}", "--format", "nosuch"], ["export", "{plain}", "--format", "gguf", "--dtype", "f8"]],
    "cache": [["cache", "frobnicate"], ["cache", "clear", "--kind", "nosuch"]],
    "info": [["info", "demo", "--dtype", "float7"], ["info", "demo", "--device", "quantum"]],
}


@pytest.fixture
def paths(tmp_path, tiny_dirs) -> dict:
    (tmp_path / "malformed.json").write_text("{ not json")
    (tmp_path / "unknown.json").write_text(json.dumps({"method": "fasp", "ratio": 0.2, "frobnicate": 1}))
    (tmp_path / "types.json").write_text(json.dumps({"method": "fasp", "ratio": "a lot"}))
    (tmp_path / "list.json").write_text(json.dumps([1, 2, 3]))
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "keep.txt").write_text("mine")
    return {"missing": str(tmp_path / "nope.json"), "malformed": str(tmp_path / "malformed.json"),
            "unknown_key": str(tmp_path / "unknown.json"), "wrong_types": str(tmp_path / "types.json"),
            "a_list": str(tmp_path / "list.json"), "nonempty": str(tmp_path / "nonempty"),
            "plain": str(tiny_dirs["llama"])}


@pytest.mark.parametrize("argv", [a for cases in BAD.values() for a in cases], ids=lambda a: " ".join(a)[:60])
def test_bad_input_is_one_line_and_exit_2_before_loading(argv, paths, monkeypatch, capsys):
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(common, "load_model", no_load)
    argv = [a.format(**paths) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals (unknown choice, not a number)
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and "Traceback" not in "\n".join(err)
    problem = [line for line in err if not line.startswith(("usage:", " "))]
    assert len(problem) == 1 and "error" in problem[0], err
    assert [p.name for p in Path(paths["nonempty"]).iterdir()] == ["keep.txt"]  # a refused --out is untouched


def test_every_command_is_in_the_matrix():
    from engine.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) - {"methods", "schedules"} <= set(BAD)


@pytest.mark.parametrize("call, match", [
    (lambda: check_ratio(None, "target ratio"), "target ratio must be a number"),
    (lambda: build_plan(None, 0.2, 4), "Pick a schedule"),
    (lambda: load_text(None), "Pick a text source"),
    (lambda: SamplingSettings(temperature=float("nan")).check(), "Sampling needs"),
    (lambda: SamplingSettings(repetition_penalty=float("nan")).check(), "Sampling needs"),
], ids=["ratio None", "schedule None", "text None", "temperature NaN", "penalty NaN"])
def test_the_engine_refuses_what_a_ui_or_api_client_can_send(call, match):
    """Values the UI matrix (tests/test_ui_bad_input.py) found crashing deep inside: each is a clear error."""
    with pytest.raises(SlimLabError, match=match):
        call()


def test_a_binary_recipe_file_is_named(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError, match="recipe.yaml is not a text file"):
        read_settings_file(path, "Recipe file")
