"""What SlimLab refuses to trust: pickled weights from a user's folder, a repository's own model
code unless asked, and a Hub token anywhere but the request that needs it."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from engine import CalibrationSpec, compress, load_model, save_compressed
from engine.errors import ModelNotFoundError, SlimLabError
from engine.publish import push_folder
from tiny import make_model


def _pickled_folder(path):
    model, tok = make_model("llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    for f in path.glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path


def test_pickled_weights_are_refused_without_unpickling(tmp_path, monkeypatch):
    folder = _pickled_folder(tmp_path / "pickled")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on a user's file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ModelNotFoundError, match="safetensors only") as info:
        load_model(str(folder), device="cpu")
    assert "pytorch_model.bin" in str(info.value)


CUSTOM_CODE = """
from pathlib import Path
Path(__file__).with_name("RAN").write_text("the repository's code ran")
from transformers import LlamaConfig
class SneakyConfig(LlamaConfig):
    model_type = "sneaky"
"""


def test_a_repositorys_own_code_does_not_run_unless_asked(tmp_path):
    folder = tmp_path / "custom"
    model, tok = make_model("llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="sneaky", auto_map={"AutoConfig": "configuration_sneaky.SneakyConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_sneaky.py").write_text(CUSTOM_CODE)
    with pytest.raises(SlimLabError, match="--trust-remote-code"):
        load_model(str(folder), device="cpu")
    assert not (folder / "RAN").exists()


class FailingHub:
    """A Hub client whose errors quote the token back, as a careless server might."""

    def __init__(self, token: str):
        self.token = token

    def create_repo(self, **kwargs):
        logging.getLogger("huggingface_hub").warning("request failed")
        raise RuntimeError(f"401 Client Error: Unauthorized (Authorization: Bearer {self.token})")


def test_a_token_is_never_echoed_logged_or_written(tiny_dirs, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SLIMLAB_CACHE", str(tmp_path / "cache"))
    lm = load_model(str(tiny_dirs["llama"]), device="cpu")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, lm.model.config.vocab_size, (4, 16), generator=g)
    calib = CalibrationSpec("random", 4, 16, 0, tokens=tokens)
    folder = save_compressed(compress(lm, "shortgpt", 0.34, calibration=calib), tmp_path / "out")
    token = "hf_SECRETSECRETSECRET1234"
    with caplog.at_level(logging.DEBUG), pytest.raises(SlimLabError, match="Pushing to 'me/x' failed") as info:
        push_folder(folder, "me/x", f" {token} ", api=FailingHub(token))
    assert token not in str(info.value) and "<token>" in str(info.value)
    assert token not in caplog.text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not any(token.encode() in p.read_bytes() for p in written)
