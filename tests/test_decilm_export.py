"""`slimlab export --format decilm`: the config read the way vLLM's DeciLMForCausalLM (nemotron_nas.py)
reads it gives exactly the weights written, and those weights, run as Llama blocks of those shapes,
give SlimLab's logits; what DeciLM cannot say is refused before anything is written."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from engine import CalibrationSpec, compress, load_compressed, save_compressed
from engine.export import NotExpressible, export
from engine.export.decilm import check
from engine.models import LoadedModel
from engine.models.adapters import adapter_for
from engine.recipes import CompensationSpec
from engine.schedules import Plan

UNEVEN = [0.1, 0.5, 0.3]
CASES = {  # name: (arch, method, params, per-layer ratios or None for uniform 0.3)
    "llama-fasp": ("llama", "fasp", {}, UNEVEN),
    "qwen2-fasp": ("qwen2", "fasp", {}, UNEVEN),
    "qwen2-modegpt": ("qwen2", "modegpt", {}, UNEVEN),
    "llama-modegpt-vo": ("llama", "modegpt", {"parts": "vo+mlp"}, UNEVEN),
    "llama-shortgpt": ("llama", "shortgpt", {}, None),
}


def _result(tiny, arch, method, params, ratios, **fields):
    model, tok = tiny(arch)
    lm = LoadedModel(model, tok, "tiny", adapter_for(model))
    g = torch.Generator().manual_seed(0)
    calib = CalibrationSpec("random", 8, 32, 0, 4, tokens=torch.randint(3, model.config.vocab_size, (8, 32), generator=g))
    if ratios:
        fields["plan"] = Plan("manual", sum(ratios) / len(ratios), ratios)
    return compress(lm, method, 0.3, calibration=calib, method_params=params, **fields)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tiny import make_model

    root = tmp_path_factory.mktemp("decilm")
    out = {}
    for name, (arch, method, params, ratios) in CASES.items():
        save_compressed(_result(make_model, arch, method, params, ratios), root / name)
        report = export(root / name, "decilm", out=root / f"{name}-decilm")
        out[name] = (root / name, root / f"{name}-decilm", report)
    return out


def _ffn_mult_width(ffn_mult: float, hidden: int) -> int:
    """vLLM's DeciLM width from ffn_mult (used only when the FFN section has that attribute)."""
    width = int(2 * ffn_mult * hidden / 3)
    return width if width % 256 == 0 else width + 256 - width % 256


def vllm_shapes(config) -> dict[str, tuple]:
    """The Llama-named weights vLLM's DeciLMForCausalLM creates for ``config`` (nemotron_nas.py, read)."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention_bias = getattr(config, "attention_bias", False) or getattr(config, "bias", False)
    qkv_bias = config.qkv_bias if hasattr(config, "qkv_bias") else attention_bias
    shapes = {"model.embed_tokens.weight": (config.vocab_size, hidden), "model.norm.weight": (hidden,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, hidden)
    for i, block in enumerate(config.block_configs):
        p = f"model.layers.{i}"
        if not block.attention.no_op:
            kv = heads // block.attention.n_heads_in_group
            rows = {"q_proj": heads * head_dim, "k_proj": kv * head_dim, "v_proj": kv * head_dim}
            for name, n in rows.items():
                shapes[f"{p}.self_attn.{name}.weight"] = (n, hidden)
                if qkv_bias:
                    shapes[f"{p}.self_attn.{name}.bias"] = (n,)
            shapes[f"{p}.self_attn.o_proj.weight"] = (hidden, heads * head_dim)
            if attention_bias:
                shapes[f"{p}.self_attn.o_proj.bias"] = (hidden,)
            shapes[f"{p}.input_layernorm.weight"] = (hidden,)
        if not block.ffn.no_op:
            width = (_ffn_mult_width(block.ffn.ffn_mult, hidden) if hasattr(block.ffn, "ffn_mult")
                     else block.ffn.intermediate_size)
            shapes |= {f"{p}.mlp.gate_proj.weight": (width, hidden), f"{p}.mlp.up_proj.weight": (width, hidden),
                       f"{p}.mlp.down_proj.weight": (hidden, width), f"{p}.post_attention_layernorm.weight": (hidden,)}
    return shapes


def _config(folder):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, trust_remote_code=True)


@pytest.mark.parametrize("name", CASES)
def test_the_config_read_as_vllm_reads_it_names_exactly_the_weights_written(exported, name):
    source, folder, report = exported[name]
    config = _config(folder)
    assert type(config).__name__ == "DeciLMConfig" and config.model_type == "nemotron-nas"
    assert config.architectures == ["DeciLMForCausalLM"]
    assert all(not hasattr(b.ffn, "ffn_mult") for b in config.block_configs)  # the explicit width is what vLLM uses
    weights = load_file(str(folder / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == vllm_shapes(config)
    # vLLM's KV-head count (the first attention block's) is the model's
    first = next(b for b in config.block_configs if not b.attention.no_op)
    assert config.num_attention_heads // first.attention.n_heads_in_group == config.num_key_value_heads
    assert json.loads((folder / "config.json").read_text())["rope_theta"] == config.rope_parameters["rope_theta"]
    assert not (folder / "slimlab.json").exists() and (folder / "tokenizer.json").exists()


def test_per_layer_widths_are_explicit_intermediate_sizes(exported):
    source, folder, report = exported["llama-fasp"]
    meta = json.loads((source / "slimlab.json").read_text())
    assert [b.ffn.intermediate_size for b in _config(folder).block_configs] == meta["structure"]["mlp"]
    assert len(set(meta["structure"]["mlp"])) == 3
    assert report.details["padded_zeros"] > 0 and any("zero-padded" in n for n in report.notes)
    assert any("vllm serve" in n and "--trust-remote-code" in n for n in report.notes)


def _as_llama_blocks(source, folder) -> nn.Module:
    """The written weights run as the base architecture's blocks with the config's per-layer widths
    (DeciLM blocks are Llama blocks), outside SlimLab's loader."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = _config(folder)
    base = AutoConfig.from_pretrained(source)
    model = AutoModelForCausalLM.from_config(base).eval()
    for layer, block in zip(model.model.layers, config.block_configs):
        width, hidden = block.ffn.intermediate_size, config.hidden_size
        layer.mlp.gate_proj = nn.Linear(hidden, width, bias=False)
        layer.mlp.up_proj = nn.Linear(hidden, width, bias=False)
        layer.mlp.down_proj = nn.Linear(width, hidden, bias=False)
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=not config.tie_word_embeddings)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


@pytest.mark.parametrize("name", CASES)
def test_the_padded_weights_give_slimlabs_logits(exported, name):
    source, folder, _report = exported[name]
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = load_compressed(source, device="cpu").model(input_ids=ids).logits
        got = _as_llama_blocks(source, folder)(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("meta, words", [
    ({"method": "slicegpt", "config": {"model_type": "llama"}}, "SliceGPT"),
    ({"method": "dotresize", "config": {"model_type": "llama"}}, "DOTResize"),
    ({"method": "fasp", "compensation": {"ranks": {}}, "config": {"model_type": "llama"}}, "side branches"),
    ({"method": "fasp", "config": {"model_type": "qwen3"}}, "'qwen3'"),
    ({"method": "fasp", "config": {"model_type": "opt"}}, "'opt'"),
])
def test_what_decilm_cannot_say_is_refused_before_loading(meta, words):
    with pytest.raises(NotExpressible, match=words) as info:
        check(meta)
    assert "--format hf" in str(info.value)


def test_a_refused_export_leaves_nothing(tiny, tmp_path):
    save_compressed(_result(tiny, "llama", "fasp", {}, None, compensation=CompensationSpec(4, "mlp")), tmp_path / "r")
    with pytest.raises(NotExpressible, match="side branches"):
        export(tmp_path / "r", "decilm", out=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
