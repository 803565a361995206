"""Self-contained transformers folders: every saved result loads with
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` in a process where SlimLab
cannot be imported, with the logits of SlimLab's own loader; uniform results stay plain checkpoints."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from engine import CalibrationSpec, compress, load_compressed, save_compressed
from engine.errors import ConfigError
from engine.export import export
from engine.compressed.remote_code import MODELING_FILE, NotSelfContained, layout_of
from engine.models import LoadedModel
from engine.models.adapters import adapter_for
from engine.recipes import CompensationSpec
from engine.schedules import Plan

UNEVEN = [0.1, 0.5, 0.3]  # per-layer ratios of the 3-layer tiny models: different widths per layer

# name: (arch, method, method params, plan ratios or None for uniform 0.3, compensation rank, remote code expected)
CASES = {
    "llama-slicegpt-per-layer": ("llama", "slicegpt", {}, UNEVEN, 0, True),
    "qwen2-slicegpt-per-layer": ("qwen2", "slicegpt", {}, UNEVEN, 0, True),
    "llama-slicegpt-shared-tied": ("llama", "slicegpt", {"variant": "shared"}, None, 0, True),
    "llama-dotresize-per-layer": ("llama", "dotresize", {}, UNEVEN, 0, True),  # SliceGPT's modules, an OT basis
    "llama-fasp": ("llama", "fasp", {}, UNEVEN, 0, True),
    "qwen2-fasp": ("qwen2", "fasp", {}, UNEVEN, 0, True),
    "qwen2-wanda-sp-mlp": ("qwen2", "wanda-sp", {"parts": "mlp"}, UNEVEN, 0, True),
    "llama-fasp-compensated": ("llama", "fasp", {}, None, 4, True),
    "qwen2-fasp-compensated": ("qwen2", "fasp", {"parts": "mlp"}, UNEVEN, 4, True),
    "llama-modegpt": ("llama", "modegpt", {}, UNEVEN, 0, True),
    "qwen2-modegpt": ("qwen2", "modegpt", {}, UNEVEN, 0, True),
    "llama-shortgpt": ("llama", "shortgpt", {}, None, 0, False),
    "qwen2-shortgpt": ("qwen2", "shortgpt", {}, None, 0, False),
    "qwen2-fasp-uniform-mlp": ("qwen2", "fasp", {"parts": "mlp"}, None, 0, False),
    "gemma3-fasp-compensated": ("gemma3", "fasp", {}, UNEVEN, 4, True),  # norms after each half, sliding layers
    "gemma3-modegpt": ("gemma3", "modegpt", {}, UNEVEN, 0, True),
    "gemma3-shortgpt": ("gemma3", "shortgpt", {}, None, 0, False),
    "llama-olica": ("llama", "olica", {}, UNEVEN, 0, True),  # low-rank q/k, shrunk value heads, side branches
    "qwen2-olica": ("qwen2", "olica", {}, UNEVEN, 0, True),
    "gemma3-olica": ("gemma3", "olica", {}, UNEVEN, 0, True),
    # per-block channel selections: gather readers, scatter writers (its own per-layer amounts: no plan)
    "llama-disp-llm": ("llama", "disp-llm", {"steps": 2, "seqlen": 16, "batch": 2}, None, 0, True),
    "opt-disp-llm": ("opt", "disp-llm", {"steps": 2, "seqlen": 16, "batch": 2}, None, 0, True),
    "gemma3-disp-llm": ("gemma3", "disp-llm", {"steps": 2, "seqlen": 16, "batch": 2}, None, 0, True),
}
# `slimlab export --format hf --dtype bf16` of a saved case: name -> (case, remote code expected)
EXPORTS = {"qwen2-fasp-hf-bf16": ("qwen2-fasp", True), "llama-shortgpt-hf-bf16": ("llama-shortgpt", False)}
REMOTE = {name: case[-1] for name, case in CASES.items()} | {name: e[1] for name, e in EXPORTS.items()}

# Runs in a fresh interpreter, cwd outside the repo, no PYTHONPATH, with `engine` and `ui` unimportable.
PLAIN_LOADER = textwrap.dedent('''
    import importlib.abc, json, sys

    class NoSlimLab(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("engine", "ui"):
                raise ImportError(f"SlimLab is blocked here: {name}")

    sys.meta_path.insert(0, NoSlimLab())
    try:
        import engine  # noqa: F401
        sys.exit("the block failed: engine imported")
    except ImportError:
        pass
    import torch
    from transformers import AutoModelForCausalLM

    out = {}
    for folder in sys.argv[1:]:
        data = torch.load(folder + ".pt")
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(input_ids=data["ids"]).logits
            greedy = model.generate(data["ids"][:1, :6], max_new_tokens=6, do_sample=False, min_new_tokens=6)
        out[folder] = {"class": type(model).__name__, "diff": (logits - data["logits"]).abs().max().item(),
                       "greedy": greedy[0].tolist()}
    out["slimlab_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("engine", "ui"))
    print(json.dumps(out))
''')


def _calibration(vocab: int) -> CalibrationSpec:
    g = torch.Generator().manual_seed(0)
    return CalibrationSpec("random", 8, 32, 0, 4, tokens=torch.randint(3, vocab, (8, 32), generator=g))


def _compress(tiny, arch, method, params, ratios, rank):
    model, tok = tiny(arch)
    lm = LoadedModel(model, tok, "tiny", adapter_for(model))
    fields = {"plan": Plan("manual", sum(ratios) / len(ratios), ratios)} if ratios else {}
    if rank:
        fields["compensation"] = CompensationSpec(rank, "both")
    return compress(lm, method, 0.3, calibration=_calibration(model.config.vocab_size), method_params=params,
                    **fields)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every case compressed and saved, with SlimLab's own loader's logits and greedy tokens beside it."""
    from tiny import make_model

    root = tmp_path_factory.mktemp("hf_remote")
    folders = {}
    for name, (arch, method, params, ratios, rank, _remote) in CASES.items():
        save_compressed(_compress(make_model, arch, method, params, ratios, rank), root / name)
        folders[name] = root / name
    for name, (case, _remote) in EXPORTS.items():
        export(folders[case], "hf", "bf16", root / name)
        folders[name] = root / name
    for folder in folders.values():  # float32 logits from bf16 weights for the exports, on both sides
        reloaded = load_compressed(folder, device="cpu").model
        ids = torch.randint(3, reloaded.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            logits = reloaded(input_ids=ids).logits
            greedy = reloaded.generate(ids[:1, :6], max_new_tokens=6, do_sample=False, min_new_tokens=6)
        torch.save({"ids": ids, "logits": logits, "greedy": greedy[0].tolist()}, f"{folder}.pt")
    return folders


@pytest.fixture(scope="module")
def plain_loads(saved, tmp_path_factory):
    """One interpreter without SlimLab loads every folder (one process: transformers imports once)."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOADER, *map(str, saved.values())], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_plain_process_never_imported_slimlab(plain_loads):
    assert plain_loads["slimlab_modules"] == []


@pytest.mark.parametrize("name", REMOTE)
def test_a_result_loads_without_slimlab_with_identical_logits(saved, plain_loads, name):
    folder = saved[name]
    loaded = plain_loads[str(folder)]
    reference = torch.load(f"{folder}.pt")
    assert loaded["diff"] == 0.0, loaded
    assert loaded["greedy"] == reference["greedy"]
    remote = REMOTE[name]
    assert (folder / MODELING_FILE).exists() == remote
    config = json.loads((folder / "config.json").read_text())
    assert ("auto_map" in config) == remote and ("slimlab_layout" in config) == remote
    if remote:
        assert loaded["class"] == "SlimLabForCausalLM" and config["architectures"] == ["SlimLabForCausalLM"]
    else:  # a plain checkpoint: transformers' own class, no remote code involved
        assert loaded["class"] == config["architectures"][0] and loaded["class"].endswith("ForCausalLM")


def test_the_modeling_file_imports_only_torch_and_transformers(saved):
    import ast

    tree = ast.parse((saved["qwen2-fasp"] / MODELING_FILE).read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert roots <= {"__future__", "typing", "torch", "transformers"}, roots
    assert 'BASE_MODEL_TYPE = "qwen2"' in (saved["qwen2-fasp"] / MODELING_FILE).read_text()


def test_the_layout_says_what_each_method_changed(saved):
    layouts = {n: json.loads((saved[n] / "config.json").read_text())["slimlab_layout"] for n in
               ("llama-slicegpt-per-layer", "qwen2-fasp", "llama-fasp-compensated")}
    kinds = {n: {spec["kind"] for spec in layout["modules"].values()} for n, layout in layouts.items()}
    assert kinds["llama-slicegpt-per-layer"] == {"rms", "shortcut"}
    assert kinds["qwen2-fasp"] == {"scatter", "gather"}
    assert "branch" in kinds["llama-fasp-compensated"]
    widths = [layouts["qwen2-fasp"]["params"][f"model.layers.{i}.mlp.down_proj.weight"][1] for i in range(3)]
    assert len(set(widths)) == 3  # per-layer MLP widths, straight from the plan


def test_slimlabs_own_loader_still_reads_a_folder_with_remote_code(saved):
    lm = load_compressed(saved["qwen2-slicegpt-per-layer"], device="cpu")
    assert lm.model.config.model_type == "qwen2" and type(lm.model).__name__ == "Qwen2ForCausalLM"


def test_a_module_it_cannot_rebuild_is_refused_with_a_clear_message(tiny):
    model, _tok = tiny("llama")
    model.model.layers[1].mlp.act_fn = torch.nn.GELU()
    with pytest.raises(NotSelfContained, match="GELU at 'model.layers.1.mlp.act_fn'") as info:
        layout_of(model)
    assert isinstance(info.value, ConfigError) and "export" in str(info.value)


def test_a_stock_model_needs_no_layout(tiny):
    model, _tok = tiny("qwen2")
    assert layout_of(model) is None


def test_saving_a_result_it_cannot_rebuild_still_saves_without_remote_code(tiny, tmp_path, monkeypatch):
    import engine.compressed.remote_code as hf_remote

    def refuse(_model):
        raise NotSelfContained("a module of a future method")

    monkeypatch.setattr(hf_remote, "layout_of", refuse)
    save_compressed(_compress(tiny, "qwen2", "fasp", {}, UNEVEN, 0), tmp_path / "out")
    assert not (tmp_path / "out" / MODELING_FILE).exists()
    assert "auto_map" not in json.loads((tmp_path / "out" / "config.json").read_text())
    assert load_compressed(tmp_path / "out", device="cpu").model is not None
    with pytest.raises(NotSelfContained, match="future method"):
        hf_remote.write_remote_code(tmp_path / "out")


def test_the_export_writes_the_chosen_dtype_and_keeps_slimlab_json(saved):
    from safetensors import safe_open

    folder = saved["qwen2-fasp-hf-bf16"]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert (folder / "slimlab.json").exists() and (folder / "tokenizer.json").exists()
    assert (folder / "model.safetensors").stat().st_size < 0.6 * (saved["qwen2-fasp"] / "model.safetensors").stat().st_size


def test_auto_dtype_is_the_original_checkpoints_half_dtype_and_the_cli_says_so(tmp_path, capsys):
    from engine import load_model
    from engine.cli import main
    from tiny import make_model

    model, tok = make_model("qwen2")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "orig")
    tok.save_pretrained(tmp_path / "orig")
    lm = load_model(str(tmp_path / "orig"), device="cpu")
    assert lm.dtype == torch.float32  # SlimLab computes in float32 on a CPU ...
    save_compressed(compress(lm, "fasp", 0.3, calibration=_calibration(model.config.vocab_size)), tmp_path / "r")
    report = export(tmp_path / "r", "hf", out=tmp_path / "hf")  # ... and exports in the original's bf16
    assert report.dtype == report.details["dtype"] == "bf16"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    for fmt in ("hf", "decilm"):  # the folder formats default to "auto": the line names what was written
        out = tmp_path / f"cli-{fmt}"
        assert main(["export", str(tmp_path / "r"), "--format", fmt, "--out", str(out), "--quiet", "--json"]) == 0
        wrote, *_, payload = capsys.readouterr().out.splitlines()
        assert re.fullmatch(rf"wrote {re.escape(str(out))} \({fmt}, \w+, bf16, [\d.]+ MB\)", wrote), wrote
        assert json.loads(payload)["dtype"] == "bf16"


def test_an_hf_export_it_cannot_rebuild_is_refused_and_leaves_nothing(saved, tmp_path, monkeypatch):
    import engine.compressed.remote_code as hf_remote

    def refuse(_model):
        raise NotSelfContained("a module of a future method")

    monkeypatch.setattr(hf_remote, "layout_of", refuse)
    with pytest.raises(NotSelfContained, match="future method"):
        export(saved["qwen2-fasp"], "hf", out=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
