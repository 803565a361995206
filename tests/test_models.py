"""Model specs: every kind of spec loads, every bad one gets a message that names the fix."""
import json
import shutil

import pytest
import torch

from engine.errors import CorruptWeightsError, ModelNotFoundError, UnsupportedArchitectureError
from engine import load_model
from engine.models import SUPPORTED_MODEL_TYPES, adapter_for
from engine.models import hub
from tiny import MODEL_TYPES


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "opt", "gemma3"])
def test_local_folder_loads_with_adapter(tiny_dirs, arch):
    lm = load_model(str(tiny_dirs[arch]), device="cpu")
    assert lm.model.config.model_type == MODEL_TYPES.get(arch, arch)
    assert lm.adapter is adapter_for(lm.model)
    assert len(lm.adapter.layers(lm.model)) == 3
    ids = lm.tokenizer("hello world", return_tensors="pt").input_ids
    assert lm.model(ids).logits.shape[-1] == lm.model.config.vocab_size


def test_adapter_parts_point_at_real_modules(tiny):
    for arch, n_in in (("llama", 2), ("opt", 1)):
        model, _ = tiny(arch)
        adapter = adapter_for(model)
        parts = adapter.parts(model, 0)
        assert len(parts.attn_in) == 3 and len(parts.mlp_in) == n_in
        assert parts.attn_out.out_features == model.config.hidden_size
        assert parts.mlp_out.out_features == model.config.hidden_size
        assert parts.value is parts.attn_in[2]


def test_adapter_halves_reproduce_the_layer(tiny):
    """run_attention + run_mlp with the residual adds equal the layer's own forward."""
    from engine.stats import capture_layer_inputs

    for arch in ("llama", "qwen2", "opt"):
        model, tok = tiny(arch)
        adapter = adapter_for(model)
        inputs = capture_layer_inputs(model, adapter, torch.randint(3, 300, (2, 16)), 2)
        layer = adapter.layers(model)[0]
        h, kw = inputs.hidden[0], inputs.kwargs[0]
        attn_norm, mlp_norm = (getattr(layer, n) for n in adapter.norm_names)
        with torch.no_grad():
            mid = h + adapter.run_attention(layer, attn_norm(h), kw)
            out = mid + adapter.run_mlp(layer, mlp_norm(mid))
            ref = layer(h, **kw)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_activation_overwrites_its_input_only_without_gradients():
    from transformers.activations import ACT2FN

    from engine.models.adapters import activate

    x = torch.randn(4, 6)
    expected = torch.nn.functional.silu(x)
    kept = x.clone().requires_grad_()
    with torch.enable_grad():
        torch.testing.assert_close(activate(ACT2FN["silu"], kept), expected)
    torch.testing.assert_close(kept.detach(), x)  # recorded for autograd: a new tensor
    with torch.no_grad():
        buffer = x.clone()
        out = activate(ACT2FN["silu"], buffer)
        assert out.data_ptr() == buffer.data_ptr()  # no new buffer
        torch.testing.assert_close(out, expected)
        gelu = ACT2FN["gelu"]  # no in-place variant: computed as usual
        torch.testing.assert_close(activate(gelu, x.clone()), gelu(x))


def test_fast_rms_norm_matches_the_module(tiny):
    from engine.models.adapters import normalize

    model, _ = tiny("llama")
    norm = model.model.layers[0].input_layernorm
    with torch.no_grad():
        norm.weight.normal_()
        x = torch.randn(2, 5, model.config.hidden_size)
        torch.testing.assert_close(normalize(norm, x), norm(x))
        assert normalize(norm, x).data_ptr() != x.data_ptr()  # the input is left alone
        x16 = x.to(torch.bfloat16)  # other dtypes take the module's own path
        assert torch.equal(normalize(norm, x16), norm(x16))


def test_missing_path_names_the_fix():
    with pytest.raises(ModelNotFoundError, match="No such file or folder.*'demo'"):
        load_model("./no/such/model", device="cpu")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_unreachable_hub_id_mentions_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # empty local Hub cache
    hub.hub_reachable.cache_clear()
    try:
        with pytest.raises(ModelNotFoundError, match="offline"):
            load_model("some-org/some-model", device="cpu")
    finally:
        hub.hub_reachable.cache_clear()


def test_unsupported_architecture_lists_supported(tiny_dirs, tmp_path):
    folder = tmp_path / "gpt2ish"
    shutil.copytree(tiny_dirs["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt2"
    config["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError) as err:
        load_model(str(folder), device="cpu")
    assert "gpt2" in str(err.value)
    for name in SUPPORTED_MODEL_TYPES:
        assert name in str(err.value)


def test_truncated_weights_are_reported(tiny_dirs, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_dirs["llama"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptWeightsError, match="corrupt or truncated"):
        load_model(str(folder), device="cpu")


def test_truncated_gguf_is_reported(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(CorruptWeightsError, match="GGUF"):
        load_model(str(bad), device="cpu")


def test_unknown_device_is_refused(tiny_dirs):
    from engine.errors import SlimLabError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SlimLabError, match="no CUDA GPU"):
        load_model(str(tiny_dirs["llama"]), device="cuda")


def test_hub_check_fails_fast_when_forced_offline(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    t = time.perf_counter()
    assert hub.hub_reachable() is False
    assert time.perf_counter() - t < 1.0
    hub.hub_reachable.cache_clear()


@pytest.mark.demo
def test_demo_model_matches_the_card(demo_lm):
    from engine.analysis import account

    info = account(demo_lm.model, demo_lm.adapter)
    assert (info.num_layers, info.hidden_size, info.num_heads, info.num_kv_heads) == (30, 576, 9, 3)
    assert info.tied_embeddings
    assert info.params_total == 134_515_008
    assert demo_lm.tokenizer.chat_template
