"""Engine v2 contracts: the driver matches the layers' own forward, no method touches the
original, streamed compression equals in-memory compression, registries refuse duplicates."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from engine import compress, load_compressed, load_model, save_compressed
from engine.errors import ConfigError
from engine.methods import Method, available_methods, register
from engine.methods.fasp import PairPruningStructure
from engine.models.adapters import adapter_for
from engine.models import LoadedModel
from engine.stats import LayerHooks, ModelLayers, capture_layer_inputs, run_sequential
from engine.progress import Reporter
from tiny import logits as _logits, random_calibration as _calibration

METHOD_PARAMS = {"slicegpt": [{"variant": "per-layer"}, {"variant": "shared"}], "fasp": [{}], "wanda-sp": [{}],
                 "shortgpt": [{}], "modegpt": [{}], "olica": [{}], "prunenet": [{"episodes": 2}],
                 "dotresize": [{"variant": "per-layer"}, {"variant": "shared"}],
                 "disp-llm": [{"steps": 2, "seqlen": 16, "batch": 2}]}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "opt", "gemma3"])
def test_driver_reproduces_each_layers_own_forward(tiny, arch):
    model, tok = tiny(arch)
    adapter = adapter_for(model)
    calib = _calibration(model.config.vocab_size)
    inputs = capture_layer_inputs(model, adapter, calib.tokens, calib.batch_size)
    seen = []

    class Observe(LayerHooks):
        observes_layers = True

        def end_layer(self, index, layer, layer_in, layer_out):
            seen.append((layer_in, layer_out))

    run_sequential(inputs, adapter, ModelLayers(model, adapter), Observe(), Reporter(), "check")
    x = inputs.hidden
    with torch.no_grad():
        for i, (layer, (layer_in, layer_out)) in enumerate(zip(adapter.layers(model), seen)):
            expected = [layer(h, **kw) for h, kw in zip(x, inputs.of_layer(i))]
            expected = [e[0] if isinstance(e, tuple) else e for e in expected]
            for got, want in zip(layer_out, expected):  # read-only passes are exact: bit for bit
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            x = expected


@pytest.mark.parametrize("method", sorted(METHOD_PARAMS))
def test_no_method_writes_into_the_original(tiny, method, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMLAB_CACHE", str(tmp_path))  # where a method stores what it learned (PruneNet's policy)
    model, tok = tiny("llama")
    lm = LoadedModel(model, tok, "tiny", adapter_for(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for params in METHOD_PARAMS[method]:
        result = compress(lm, method, 0.3, calibration=_calibration(model.config.vocab_size), method_params=params)
        assert result.model is not model
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert adapter_for(model).is_tied(model)  # the original stays tied although SliceGPT unties its copy


def test_every_registered_method_is_covered_here():
    assert set(available_methods()) == set(METHOD_PARAMS)


@pytest.mark.parametrize("arch,method,params", [
    ("llama", "fasp", {}), ("opt", "fasp", {}), ("llama", "slicegpt", {}), ("qwen2", "slicegpt", {"variant": "shared"}),
    ("llama", "shortgpt", {}), ("qwen2", "modegpt", {}),
])
def test_streamed_compression_equals_in_memory(tiny_dirs, tmp_path, arch, method, params):
    folder = tiny_dirs[arch]
    whole = load_model(str(folder), device="cpu")
    streamed = load_model(str(folder), device="cpu", stream=True)
    assert streamed.streamed and not whole.streamed
    assert all(p.is_meta for p in streamed.adapter.layers(streamed.model).parameters())
    calib = _calibration(whole.model.config.vocab_size)
    a = compress(whole, method, 0.3, calibration=calib, method_params=params)
    b = compress(streamed, method, 0.3, calibration=calib, method_params=params)
    assert b.spooled and not a.spooled
    assert a.accounting.params_total == b.accounting.params_total
    save_compressed(a, tmp_path / "a")
    save_compressed(b, tmp_path / "b")
    index = json.loads((tmp_path / "b" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(b.spooled) + 1
    ra, rb = load_compressed(tmp_path / "a", device="cpu"), load_compressed(tmp_path / "b", device="cpu")
    ids = calib.tokens[:2]
    torch.testing.assert_close(_logits(rb.model, ids), _logits(ra.model, ids), rtol=0, atol=0)
    torch.testing.assert_close(_logits(ra.model, ids), _logits(a.model, ids), rtol=0, atol=0)


def test_streamed_shortgpt_folder_is_a_plain_sharded_checkpoint(tiny_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = load_model(str(tiny_dirs["llama"]), device="cpu", stream=True)
    calib = _calibration(lm.model.config.vocab_size)
    result = compress(lm, "shortgpt", 0.34, calibration=calib)
    save_compressed(result, tmp_path / "out")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    reloaded = load_compressed(tmp_path / "out", device="cpu")
    ids = calib.tokens[:2]
    torch.testing.assert_close(_logits(plain, ids), _logits(reloaded.model, ids), rtol=0, atol=0)


def test_duplicate_method_names_are_refused():
    fasp = available_methods()["fasp"]
    with pytest.raises(ConfigError, match="already registered"):
        register(fasp)


def test_a_structure_from_a_newer_slimlab_is_refused():
    data = PairPruningStructure([8], [None], [4, 2, 16]).to_dict()
    assert PairPruningStructure.from_dict(data) == PairPruningStructure([8], [None], [4, 2, 16])
    with pytest.raises(ConfigError, match="version"):
        PairPruningStructure.from_dict(data | {"version": PairPruningStructure.VERSION + 1})


def test_method_is_an_abstract_base():
    with pytest.raises(TypeError):
        Method()  # compress and rebuild are abstract


@pytest.mark.parametrize("score", ["magnitude", "fluctuation", "ridge-leverage"])
def test_a_score_is_configuration_not_a_new_method(tiny, score):
    """Pair pruning takes any registered importance score: other channels, same shapes."""
    model, tok = tiny("llama")
    lm = LoadedModel(model, tok, "tiny", adapter_for(model))
    calib = _calibration(model.config.vocab_size)
    wanda = compress(lm, "fasp", 0.4, calibration=calib, method_params={"parts": "value"})
    other = compress(lm, "fasp", 0.4, calibration=calib, method_params={"parts": "value", "score": score})
    assert other.accounting.params_total == wanda.accounting.params_total
    assert other.structure.value_kept != wanda.structure.value_kept
    assert other.recipe.method_params["score"] == score


def test_an_accelerate_offloaded_model_can_be_compressed(tiny_dirs, tmp_path):
    """Layers offloaded to disk by accelerate's device_map are loaded one at a time for the pass."""
    from transformers import AutoModelForCausalLM

    folder = tiny_dirs["llama"]
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                  "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk"}
    offloaded = AutoModelForCausalLM.from_pretrained(folder, device_map=device_map, offload_folder=str(tmp_path / "off"),
                                                     dtype=torch.float32).eval()
    whole = load_model(str(folder), device="cpu")
    lm = LoadedModel(offloaded, whole.tokenizer, "offloaded", adapter_for(offloaded))
    calib = _calibration(whole.model.config.vocab_size)
    a = compress(whole, "fasp", 0.3, calibration=calib)
    b = compress(lm, "fasp", 0.3, calibration=calib)
    ids = calib.tokens[:2]
    torch.testing.assert_close(_logits(b.model, ids), _logits(a.model, ids), rtol=1e-5, atol=1e-5)
    assert all(p.device.type == "cpu" for p in b.model.parameters())  # the disk layers' copies hold weights


def test_finished_layers_are_kept_where_the_original_keeps_them(tiny):
    """On a GPU only the layer at work is on the device when the model lives elsewhere: a finished
    layer goes back where its original layer is (the CPU for one accelerate offloaded), not to
    the device of the embeddings. ``meta`` stands in for the GPU here, so the check runs anywhere."""
    from engine.workspace import Workspace

    model, tok = tiny("llama")
    lm = LoadedModel(model, tok, "tiny", adapter_for(model))
    layers = lm.adapter.layers(model)
    model.get_input_embeddings().to("meta")  # "the embeddings are on the GPU"
    layers[2].to("meta")  # offloaded: its weights sit behind accelerate's hooks, the module holds meta
    work = Workspace(lm)
    assert [work.home(i) for i in range(3)] == [torch.device("cpu")] * 3
    for i in (0, 2):
        work.close(i, copy.deepcopy(layers[0]))
    assert all(p.device.type == "cpu" for p in lm.adapter.layers(work.model).parameters())



@pytest.mark.parametrize("method", ["fasp", "shortgpt"])
def test_finished_layers_leave_the_device_until_the_pass_ends(tiny, monkeypatch, method):
    """A model loaded whole onto a GPU, not streamed: while the pass runs, every finished layer waits on
    the CPU (the device holds the original and the layer at work only); when it ends the result's layers
    go where the original's are. ``meta`` stands in for the GPU as the original's layers' home."""
    from engine import workspace as ws

    model, tok = tiny("llama")
    lm = LoadedModel(model, tok, "tiny", adapter_for(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    on_device_while_running: list[str] = []
    close = ws.Workspace.close

    def watched_close(self, index, layer):
        close(self, index, layer)
        on_device_while_running.extend(str(p.device) for p in self.adapter.layers(self.model).parameters()
                                       if p.device != ws.PARKED)

    monkeypatch.setattr(ws.Workspace, "home", lambda self, index: torch.device("meta"))
    monkeypatch.setattr(ws.Workspace, "close", watched_close)
    result = compress(lm, method, 0.34, calibration=_calibration(model.config.vocab_size))
    assert on_device_while_running == []
    kept = list(lm.adapter.layers(result.model).parameters())
    assert kept and all(p.device.type == "meta" for p in kept)  # assembled where the original's layers live
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

def test_freed_heap_is_trimmed_only_beyond_the_pool_a_layer_reuses():
    from engine.memory import free_heap_bytes, release_freed_memory

    if free_heap_bytes() is None:
        pytest.skip("no glibc mallinfo2 here")
    block = torch.empty(64 * 2**20 // 4)  # 64 MB through the heap (under the mmap threshold set for passes)
    del block
    assert not release_freed_memory(keep_bytes=2**50)  # a pool this large is never trimmed
    before = free_heap_bytes()
    release_freed_memory(keep_bytes=0)
    assert free_heap_bytes() <= before
