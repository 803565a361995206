"""The app launched for real and driven through gradio_client, as a remote user would."""
from __future__ import annotations

import json
import time

import pytest
import torch

from engine import load_compressed

gradio_client = pytest.importorskip("gradio_client")


def client(url: str):
    return gradio_client.Client(url, verbose=False)


def test_two_sessions_compressing_at_once_are_queued_and_stay_apart(app_url, tiny_dirs, monkeypatch, tmp_path):
    import ui.handlers.compress as compress_handlers

    spans = []
    real = compress_handlers.compress

    def timed(lm, *args, **kwargs):  # observes the real engine call, changes nothing
        start = time.monotonic()
        try:
            return real(lm, *args, **kwargs)
        finally:
            spans.append((lm.spec, start, time.monotonic()))

    monkeypatch.setattr(compress_handlers, "compress", timed)
    llama, qwen = str(tiny_dirs["llama"]), str(tiny_dirs["qwen2"])
    a, b = client(app_url), client(app_url)
    a.predict(llama, api_name="/load_model")
    b.predict(qwen, api_name="/load_model")
    calib = dict(nsamples=8, seqlen=64)
    job_a = a.submit(method="slicegpt", ratio=0.25, **calib, api_name="/compress")
    job_b = b.submit(method="slicegpt", ratio=0.5, slicegpt_variant="shared", **calib, api_name="/compress")
    submitted = time.monotonic()
    out_a, out_b = job_a.result(timeout=600), job_b.result(timeout=600)

    (first, start1, end1), (_second, start2, end2) = sorted(spans, key=lambda s: s[1])
    assert submitted < end1, "both jobs must have been waiting or running at the same time"
    assert start2 >= end1, "the heavy queue runs one compression at a time"
    # each session sees its own model and its own run, nothing of the other's
    assert llama in out_a[-1] and "run 1" in out_a[-1] and qwen not in out_a[-1]
    assert qwen in out_b[-1] and "run 1" in out_b[-1] and llama not in out_b[-1]
    recipe_a = json.loads(a.predict(api_name="/recipe")[1])
    recipe_b = json.loads(b.predict(api_name="/recipe")[1])
    assert (recipe_a["model"], recipe_a["ratio"], recipe_a["method_params"]["variant"]) == (llama, 0.25, "per-layer")
    assert (recipe_b["model"], recipe_b["ratio"], recipe_b["method_params"]["variant"]) == (qwen, 0.5, "shared")
    # /save keeps its old call (a SlimLab folder) and takes the export formats by name
    assert "Saved run 1" in a.predict(folder=str(tmp_path / "a"), overwrite=False, api_name="/save")
    exported = a.predict(folder=str(tmp_path / "a-hf"), overwrite=False, fmt="hf", dtype="f16", api_name="/save")
    assert "Exported run 1" in exported and "trust_remote_code=True" in exported
    with pytest.raises(Exception, match="llama.cpp cannot express"):  # a qwen2 result
        b.predict(folder=str(tmp_path / "b.gguf"), overwrite=False, fmt="gguf", dtype="q8_0", api_name="/save")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "a-hf"]


def test_errors_are_messages_and_the_session_survives(app_url, tiny_dirs):
    c = client(app_url)
    with pytest.raises(Exception, match="No such file or folder"):
        c.predict("/no/such/model", api_name="/load_model")
    with pytest.raises(Exception, match="Compress tab"):
        c.predict(api_name="/recipe")
    status, summary, *_ = c.predict(str(tiny_dirs["llama"]), api_name="/load_model")
    assert "3 layers" in summary


def _text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


@pytest.mark.demo
def test_demo_flow_load_analyze_compress_chat_save(app_url, tmp_path):
    c = client(app_url)
    status, summary, accounting, *_ = c.predict(api_name="/load_model")  # the default spec is the demo model
    assert "30 layers" in summary and "demo" in status

    summary, heatmap, lines, scores, points = c.predict(nsamples=8, seqlen=128, api_name="/analyze")
    assert "8 × 128 tokens" in summary
    assert len(json.loads(heatmap["plot"])["data"][0]["z"]) == 31  # embeddings + 30 layers

    card, *_rest, status = c.predict(method="slicegpt", ratio=0.25, nsamples=8, seqlen=128, api_name="/compress")
    assert "BIGGER than the original" in card and "140.65 M parameters vs 134.52 M" in card
    assert "run 1" in status

    original, panel, original_stats, compressed_stats = c.predict(
        prompt="What is the capital of France?", max_new_tokens=8, temperature=0.0, api_name="/chat")
    compressed = panel["value"] if isinstance(panel, dict) else panel  # the panel is renamed after its run too
    assert not isinstance(panel, dict) or "run 1" in panel.get("label", "")
    assert original[-1]["role"] == compressed[-1]["role"] == "assistant"
    assert _text(original[-1]).strip() and _text(compressed[-1]).strip()
    assert "tokens/s" in original_stats and "tokens/s" in compressed_stats

    out = tmp_path / "demo-slicegpt-25"
    assert "Saved run 1" in c.predict(folder=str(out), overwrite=False, api_name="/save")
    lm = load_compressed(out, device="cpu")
    assert sum(p.numel() for p in lm.model.parameters()) == 140_652_288
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(lm.model(ids).logits).all()
