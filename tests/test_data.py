"""Text sources and token windows."""
import json

import pytest
import torch

from engine.data import calibration_windows, eval_windows, load_text, parse_source
from engine.errors import DataError
from tiny import make_tokenizer


def test_wikitext2_test_is_the_raw_split_with_lf(data_dir):
    text = load_text("wikitext2:test", data_dir)
    assert text.startswith("\n\n = Robert Boulter = \n")
    assert "\r" not in text
    assert len(text) == 1_294_336  # SOURCES.md: characters after CRLF -> LF


def test_wiki_test_raw_layout_gives_the_same_text(data_dir, tmp_path):
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_bytes((data_dir / "wikitext2" / "wiki.test.raw").read_bytes())
    assert load_text("wikitext2:test", tmp_path) == load_text("wikitext2:test", data_dir)


def test_validation_alias_and_local_sources(data_dir):
    assert parse_source("wikitext2:valid").split == "validation"
    assert load_text("wikitext2:validation", data_dir).startswith(" \n = Homarus gammarus = \n")
    assert "instruction" not in load_text("alpaca", data_dir)[:50]
    assert len(load_text("c4", data_dir)) > 700_000


def test_file_sources(tmp_path):
    (tmp_path / "a.txt").write_text("plain text\r\nline two")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "first"}) + "\n" + json.dumps({"text": "second"}) + "\n")
    (tmp_path / "c.json").write_text(json.dumps([{"instruction": "Do", "input": "", "output": "Done"}]))
    assert load_text(f"file:{tmp_path / 'a.txt'}") == "plain text\nline two"
    assert load_text(f"file:{tmp_path / 'b.jsonl'}") == "first\n\nsecond"
    assert load_text(f"file:{tmp_path / 'c.json'}") == "Do\nDone"


def test_bad_sources_are_clear(tmp_path):
    with pytest.raises(DataError, match="Unknown text source"):
        parse_source("nonsense")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        load_text(f"file:{tmp_path / 'empty.txt'}")
    with pytest.raises(DataError, match="not found"):
        load_text(f"file:{tmp_path / 'missing.txt'}")


def test_ptb_offline_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="SLIMLAB_DATA_DIR"):
        load_text("ptb", tmp_path)


def test_windows_are_seeded_and_sized():
    tok = make_tokenizer()
    text = "the quick brown fox jumps over the lazy dog " * 200
    a = calibration_windows(tok, text, 4, 32, seed=1)
    b = calibration_windows(tok, text, 4, 32, seed=1)
    c = calibration_windows(tok, text, 4, 32, seed=2)
    assert a.shape == (4, 32) and torch.equal(a, b) and not torch.equal(a, c)
    w = eval_windows(tok, text, 64, max_windows=3)
    assert w.shape == (3, 64)
    ids = tok(text, return_tensors="pt").input_ids[0]
    assert torch.equal(w.flatten(), ids[: 3 * 64])


def test_token_ids_are_cached_per_text_and_tokenizer(tmp_path, monkeypatch):
    from engine.data.windows import tokenize

    monkeypatch.setenv("SLIMLAB_CACHE", str(tmp_path))
    tok = make_tokenizer()
    text = "the quick brown fox jumps over the lazy dog " * 50
    expected = tok(text, return_tensors="pt").input_ids[0]
    assert torch.equal(tokenize(tok, text), expected)
    (cached,) = (tmp_path / "tokens").glob("*.pt")
    torch.save(torch.tensor([7, 7, 7]), cached)  # the next call reads the cache, not the tokenizer
    assert tokenize(tok, text).tolist() == [7, 7, 7]
    assert torch.equal(tokenize(tok, text + " more"), tok(text + " more", return_tensors="pt").input_ids[0])
    other = make_tokenizer()
    other.add_tokens(["quick brown"])  # another tokenizer: another key
    assert len(list((tmp_path / "tokens").glob("*.pt"))) == 2
    assert tokenize(other, text).tolist() != [7, 7, 7]
    cached.write_bytes(b"not a tensor")  # a corrupt file is re-encoded and rewritten
    assert torch.equal(tokenize(tok, text), expected)
    assert torch.equal(torch.load(cached, weights_only=True), expected)


def test_too_short_text_is_clear():
    tok = make_tokenizer()
    with pytest.raises(DataError, match="too short"):
        calibration_windows(tok, "tiny text", 2, 512)
    with pytest.raises(DataError, match="fewer than one window"):
        eval_windows(tok, "tiny text", 512)


def test_generated_source_samples_from_the_model(tiny):
    from engine.models import adapter_for
    from engine.models import LoadedModel
    from engine.data.generated import sample_text

    model, tok = tiny("llama")
    lm = LoadedModel(model, tok, "tiny", adapter_for(model))
    first = sample_text(lm, nsamples=2, seqlen=16, seed=3)
    assert first == sample_text(lm, nsamples=2, seqlen=16, seed=3)
    assert len(tok(first).input_ids) >= 16
