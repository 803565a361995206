"""Exported GGUF files run in llama.cpp itself (llama-cpp-python, the ``llamacpp`` extra).

Tiny results: llama.cpp's logits and greedy tokens equal SlimLab's, its tokenizer gives
transformers' ids. The demo model: the acceptance check of issue 15 (4 prompts x 32 greedy
tokens identical at f32, perplexity on 4x512 tokens within 1% at f16) for a FASP result with
per-layer widths and narrowed value heads (the deci architecture with padding)."""
import numpy as np
import pytest
import torch
from export_fixtures import RESULTS
from export_fixtures import results  # noqa: F401  (a fixture)

from engine.compressed import load_compressed
from engine.export import export

pytestmark = pytest.mark.llamacpp
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'slimlab[llamacpp]'")

from engine.evaluate.llamacpp import compare, hf_greedy, llama_greedy, open_gguf, same_tokenization  # noqa: E402

PROMPTS = ["The capital of France is", "Structured pruning removes", "Once upon a time, a small robot",
           "The three primary colors are"]


@pytest.mark.parametrize("name", list(RESULTS))
def test_llama_cpp_runs_each_tiny_result_like_slimlab(results, tmp_path, name):
    path = export(results[name], "gguf", "f32", tmp_path / "m.gguf").path
    lm = load_compressed(results[name], device="cpu", dtype="float32")
    ids = torch.randint(3, len(lm.tokenizer), (20,), generator=torch.Generator().manual_seed(2)).tolist()
    llm = open_gguf(path, n_ctx=64, threads=1, kv_f32=True)
    llm.reset()
    llm.eval(ids)
    with torch.no_grad():
        want = lm.model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(np.array(llm.scores[: len(ids)]), want, atol=1e-4, rtol=0)
    assert llama_greedy(llm, ids, 16) == hf_greedy(lm.model, ids, 16)
    llm.close()


@pytest.mark.parametrize("dtype, error", [("q8_0", 0.05), ("q4_1", 0.4)])
def test_llama_cpp_reads_quantized_files_with_f16_fallbacks(results, tmp_path, dtype, error):
    """Per-layer widths (deci), some down matrices f16 because their rows are not whole blocks."""
    report = export(results["fasp-mixed"], "gguf", dtype, tmp_path / "m.gguf")
    assert report.architecture == "deci" and any("stay f16" in n for n in report.notes)
    lm = load_compressed(results["fasp-mixed"], device="cpu", dtype="float32")
    ids = torch.randint(3, len(lm.tokenizer), (20,), generator=torch.Generator().manual_seed(2)).tolist()
    llm = open_gguf(report.path, n_ctx=64, threads=1, kv_f32=True)
    llm.eval(ids)
    with torch.no_grad():
        want = lm.model(torch.tensor([ids])).logits[0].numpy()
    got = np.array(llm.scores[: len(ids)])
    llm.close()
    assert np.linalg.norm(got - want) / np.linalg.norm(want - want.mean()) < error


def test_llama_cpp_tokenizes_like_transformers(results, tmp_path):
    from tiny import SAMPLE_TEXT

    path = export(results["fasp-mixed"], "gguf", "f16", tmp_path / "m.gguf").path
    tokenizer = load_compressed(results["fasp-mixed"], device="cpu").tokenizer
    llm = open_gguf(path, n_ctx=64, threads=1)
    assert same_tokenization(llm, tokenizer, SAMPLE_TEXT.split(". ")[:4] + ["</s>The fox 1234"])


@pytest.mark.demo
@pytest.mark.slow
def test_demo_fasp_with_per_layer_widths_matches_in_llama_cpp(demo_lm, data_dir, tmp_path):
    from engine.compress import compress
    from engine.compressed import save_compressed
    from engine.data import eval_windows, load_text
    from engine.methods import Plan
    from engine.recipes import CalibrationSpec

    n = len(demo_lm.adapter.layers(demo_lm.model))
    plan = Plan("manual", 0.2, [0.1, 0.3] * (n // 2))
    result = compress(demo_lm, "fasp", plan=plan, calibration=CalibrationSpec("wikitext2:validation", 16, 256))
    folder = save_compressed(result, tmp_path / "fasp")
    f32 = export(folder, "gguf", "f32")
    f16 = export(folder, "gguf", "f16")
    assert f32.architecture == "deci" and f32.details["padded_zeros"] > 0
    lm = load_compressed(folder, device="cpu", dtype="float32")
    prompts = [lm.tokenizer(p)["input_ids"] for p in PROMPTS]
    windows = eval_windows(lm.tokenizer, load_text("wikitext2", str(data_dir)), 512, 4)
    check = compare(lm.model, f32.path, f16.path, prompts, 32, windows)
    assert check.greedy_matched == 4, check.first_divergence
    assert check.ppl_rel_diff < 0.01, check.to_dict()
    assert same_tokenization(open_gguf(f16.path, n_ctx=64), lm.tokenizer, PROMPTS)


def test_bench_times_two_results_in_llama_cpp_taking_turns(results, capsys):
    import json

    from engine.cli import main

    args = ["bench", str(results["fasp-mlp-uniform"]), "--compare", str(results["shortgpt"]), "--engine", "llamacpp",
            "--prefill-len", "8", "--decode-tokens", "4", "--decode-context", "4", "--repeats", "3", "--threads", "1",
            "--json"]
    assert main(args) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fasp, short = payload["models"]
    assert [m["spec"] for m in payload["models"]] == [str(results["fasp-mlp-uniform"]), str(results["shortgpt"])]
    assert len(fasp["decode_s"]) == len(short["decode_s"]) == 3 and short["gguf_mb"] < fasp["gguf_mb"]
    rate = short["decode_tokens_per_s_b1"]
    assert rate["min"] <= rate["median"] <= rate["max"] and rate["median"] > 0
    ratio = payload["ratios"]["decode_tokens_per_s_b1"]
    assert ratio == pytest.approx(rate["median"] / fasp["decode_tokens_per_s_b1"]["median"])
