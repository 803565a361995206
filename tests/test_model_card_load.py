"""The model card's "Load it" says, per result, how to run it for real: plain ``from_pretrained`` for a
result the stock config describes, ``trust_remote_code=True`` for a self-contained one, SlimLab where
neither works, and the llama.cpp / vLLM commands after the matching export (or why that export is refused).
Each instruction is followed here: the transformers line loads the folder with SlimLab's logits, and every
``slimlab export`` line the card prints runs and writes the file its engine command names."""
import json
import re
import shlex
import shutil

import pytest
import torch
from export_fixtures import _calibration, lm_of
from export_fixtures import results  # noqa: F401  (a fixture)
from transformers import AutoModelForCausalLM

from engine.cli import main
from engine.compress import compress
from engine.compressed import load_compressed, save_compressed
from engine.publish import model_card, read_meta

IDS = torch.tensor([[1, 7, 42, 99, 5, 300]])
LOADS = {"fasp-mixed": "remote", "fasp-mlp-uniform": "plain", "wanda-values": "remote", "shortgpt": "plain",
         "slicegpt-shared": "remote"}


def _load_it(folder, repo="me/tiny") -> str:
    return model_card(read_meta(folder), repo).split("## Load it")[1].split("## Recipe")[0]


def _engine_sections(section: str) -> dict[str, str]:
    return dict(re.findall(r"### (.+?)\n\n(.*?)(?=\n### |\Z)", section, re.S))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("name", list(LOADS))
def test_the_transformers_line_is_the_one_that_loads_the_folder(results, name):
    section = _load_it(results[name])
    line = next(x for x in section.splitlines() if "AutoModelForCausalLM.from_pretrained" in x)
    remote = LOADS[name] == "remote"
    assert ("trust_remote_code=True" in line) == remote and '"me/tiny"' in line
    assert ("plain checkpoint" in section) != remote and "load_compressed" in section
    model = AutoModelForCausalLM.from_pretrained(results[name], trust_remote_code=remote)
    expected = _logits(load_compressed(results[name], device="cpu", dtype="float32").model)
    torch.testing.assert_close(_logits(model), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name, refused", [("fasp-mixed", ()), ("shortgpt", ()),
                                           ("slicegpt-shared", ("DeciLM / Nemotron-NAS (vLLM)",))])
def test_each_engine_gets_its_commands_and_they_run(results, tmp_path, monkeypatch, name, refused):
    sections = _engine_sections(_load_it(results[name], f"me/{name}"))
    assert set(sections) == {"GGUF (llama.cpp)", "DeciLM / Nemotron-NAS (vLLM)"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).symlink_to(results[name])  # what `hf download ... --local-dir NAME` leaves
    for label, text in sections.items():
        if label in refused:
            assert text.startswith("Not available for this result: DeciLM (vLLM) cannot express SliceGPT")
            continue
        commands = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
        assert commands[0] == f"hf download me/{name} --local-dir {name}"
        assert main(shlex.split(commands[1])[1:] + ["--quiet"]) == 0
        written = shlex.split(commands[1])[shlex.split(commands[1]).index("--out") + 1]
        assert (tmp_path / written).exists() and written in commands[2]
        assert commands[2].split()[0] in ("llama-cli", "vllm")


def test_a_refused_export_and_a_folder_transformers_cannot_build(results, tmp_path):
    from tiny import make_model

    lm = lm_of(make_model)
    sliced = compress(lm, "slicegpt", 0.25, calibration=_calibration(len(lm.tokenizer)))
    folder = save_compressed(sliced, tmp_path / "per-layer")
    sections = _engine_sections(_load_it(folder))
    assert sections["GGUF (llama.cpp)"].startswith("Not available for this result: llama.cpp cannot express "
                                                   "SliceGPT per-layer")
    assert "```" not in sections["GGUF (llama.cpp)"] and "trust_remote_code=True" in _load_it(folder)

    old = shutil.copytree(results["fasp-mixed"], tmp_path / "old")  # saved before folders were self-contained
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "auto_map"}))
    (old / "modeling_slimlab.py").unlink()
    section = _load_it(old)
    assert read_meta(old)["loads"] == "slimlab" and "from_pretrained" not in section
    assert "transformers alone cannot build" in section and "load_compressed" in section
