"""Perplexity of a trimmed vocabulary is per ORIGINAL token: the original's windows, decoded and re-encoded
by the trimmed tokenizer, the NLL divided by the original token count; the original tokenizer travels with
the saved folder (``reference_tokenizer/``) and every ppl path (engine, api, ``slimlab ppl``/``eval``, the
UI's comparison) uses it; a folder that lost it is measured per its own tokens, with a note."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from engine import compress, evaluate_perplexity, load_compressed, load_model, perplexity, perplexity_windows, \
    save_compressed
from engine.cli import main
from engine.data import eval_windows, load_text
from engine.errors import ConfigError
from engine.recipes import CalibrationSpec, Recipe, VocabularySpec

SEQLEN, WINDOWS = 64, 3
CALIB = CalibrationSpec("wikitext2:validation", nsamples=8, seqlen=64)


@pytest.fixture(scope="module")
def trimmed(tiny_dirs, data_dir):
    """The tiny llama, FASP 30% and its vocabulary trimmed to 285 of 320 tokens (tests/test_vocabulary_stage.py)."""
    lm = load_model(str(tiny_dirs["llama"]), device="cpu")
    recipe = Recipe(model=lm.spec, method="fasp", ratio=0.3, calibration=CALIB,
                    vocabulary=VocabularySpec(keep=285, tokens=4000, seqlen=64))
    return lm, compress(lm, recipe, data_dir=str(data_dir))


def _float64_ppl(model, tokenizer, reference, data_dir) -> tuple[float, int]:
    """Independently: the reference's windows as text, encoded by ``tokenizer``, full-vocabulary log-softmax
    in float64; (ppl per reference predicted token, tokens the model read)."""
    windows = eval_windows(reference, load_text("wikitext2", str(data_dir)), SEQLEN, WINDOWS)
    total, read = 0.0, 0
    with torch.no_grad():
        for window in windows.tolist():
            text = reference.decode(window, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            logp = model(input_ids=ids, use_cache=False).logits[0, :-1].double().log_softmax(-1)
            total -= logp.gather(1, ids[0, 1:, None]).sum().item()
            read += ids.shape[1]
    return math.exp(total / (WINDOWS * (SEQLEN - 1))), read


def test_untrimmed_ppl_is_unchanged_with_or_without_a_reference(tiny_dirs, data_dir):
    lm = load_model(str(tiny_dirs["llama"]), device="cpu")
    plain = perplexity(lm.model, lm.tokenizer, "wikitext2", SEQLEN, WINDOWS, data_dir=str(data_dir))
    same = perplexity(lm.model, lm.tokenizer, "wikitext2", SEQLEN, WINDOWS, data_dir=str(data_dir),
                      reference_tokenizer=lm.tokenizer)
    assert same.ppl == plain.ppl and not plain.per_reference_token and plain.model_tokens is None
    assert plain.tokens == WINDOWS * (SEQLEN - 1) and plain.note == ""
    assert evaluate_perplexity(lm, "wikitext2", SEQLEN, WINDOWS, str(data_dir)).ppl == plain.ppl

    # an equal tokenizer loaded again takes the re-encoding path: the text round-trips, the same number
    twin = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    again = perplexity(lm.model, lm.tokenizer, "wikitext2", SEQLEN, WINDOWS, data_dir=str(data_dir),
                       reference_tokenizer=twin)
    assert again.per_reference_token and again.model_tokens == WINDOWS * SEQLEN and again.tokens == plain.tokens
    assert again.ppl == pytest.approx(plain.ppl, rel=1e-6)


def test_a_trimmed_result_is_measured_per_original_token(trimmed, data_dir):
    lm, result = trimmed
    assert result.reference_tokenizer is lm.tokenizer and len(result.tokenizer) < len(lm.tokenizer)
    got = evaluate_perplexity(result, "wikitext2", SEQLEN, WINDOWS, str(data_dir))
    expected, read = _float64_ppl(result.model, result.tokenizer, lm.tokenizer, data_dir)
    assert got.per_reference_token and got.tokens == WINDOWS * (SEQLEN - 1) and got.model_tokens == read
    assert read > WINDOWS * SEQLEN  # the trimmed tokenizer splits some of this text into more pieces
    assert got.ppl == pytest.approx(expected, rel=1e-6)
    assert got.note == ""
    assert perplexity_windows(result, "wikitext2", SEQLEN, str(data_dir)) == \
        perplexity_windows(lm, "wikitext2", SEQLEN, str(data_dir))  # the original's windows

    # a window the trimmed tokenizer makes longer than the model's context is refused, not truncated
    context = result.model.config.max_position_embeddings
    with pytest.raises(ConfigError, match="more than the model's context"):
        evaluate_perplexity(result, "wikitext2", context, 1, str(data_dir))


def _cli_json(capsys, argv: list[str]) -> tuple[str, dict]:
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return "\n".join(out[:-1]), json.loads(out[-1])


def test_saved_folder_carries_the_original_tokenizer_and_the_cli_reports_per_original_token(
        trimmed, data_dir, tmp_path, capsys):
    lm, result = trimmed
    folder = save_compressed(result, tmp_path / "out")
    assert (folder / "reference_tokenizer" / "tokenizer.json").is_file()
    assert json.loads((folder / "slimlab.json").read_text())["reference_tokenizer"] == "reference_tokenizer"
    loaded = load_compressed(folder, device="cpu")
    assert loaded.reference_tokenizer.get_vocab() == lm.tokenizer.get_vocab()
    expected = evaluate_perplexity(result, "wikitext2", SEQLEN, WINDOWS, str(data_dir)).ppl

    window_args = ["--seqlen", str(SEQLEN), "--max-windows", str(WINDOWS), "--json", "--quiet"]
    text, ppl = _cli_json(capsys, ["ppl", str(folder), *window_args])
    assert ppl["per_reference_token"] and ppl["ppl"] == pytest.approx(expected, rel=1e-6)
    assert "per original token" in text and ppl["tokens"] == WINDOWS * (SEQLEN - 1)

    text, report = _cli_json(capsys, ["eval", str(folder), "--ppl", *window_args])
    measured = report["report"]["models"][0]["perplexity"]
    assert measured["per_reference_token"] and measured["ppl"] == pytest.approx(expected, rel=1e-6)
    assert "per original token" in report["report"]["protocols"]["perplexity"] and "per original token" in text

    # the folder without its original tokenizer still loads, and says its ppl is per its own tokens
    shutil.rmtree(folder / "reference_tokenizer")
    own = perplexity(result.model, result.tokenizer, "wikitext2", SEQLEN, WINDOWS, data_dir=str(data_dir))
    assert load_compressed(folder, device="cpu").reference_tokenizer is None
    text, ppl = _cli_json(capsys, ["ppl", str(folder), *window_args])
    assert not ppl["per_reference_token"] and ppl["ppl"] == pytest.approx(own.ppl, rel=1e-6)
    assert "not comparable with the original model's ppl" in ppl["note"] and ppl["note"] in text


def test_an_untrimmed_folder_has_no_reference_and_no_note(tiny_dirs, data_dir, tmp_path):
    lm = load_model(str(tiny_dirs["llama"]), device="cpu")
    result = compress(lm, Recipe(model=lm.spec, method="fasp", ratio=0.3, calibration=CALIB), data_dir=str(data_dir))
    folder = save_compressed(result, tmp_path / "plain")
    assert result.reference_tokenizer is None and not (folder / "reference_tokenizer").exists()
    loaded = load_compressed(folder, device="cpu")
    got = evaluate_perplexity(loaded, "wikitext2", SEQLEN, WINDOWS, str(data_dir))
    assert loaded.reference_tokenizer is None and not got.per_reference_token and got.note == ""


def test_the_ui_comparison_says_per_original_token():
    from ui.handlers.evaluate import comparison_rows

    base = {"ppl": 30.0, "dataset": "wikitext2", "seqlen": 64, "windows": 3}
    trimmed = base | {"ppl": 33.0, "per_reference_token": True, "model_tokens": 200}
    label, original, compressed, change = comparison_rows({"perplexity": base}, {"perplexity": trimmed})[0]
    assert "compressed: per original token" in label and "1.042x the tokens" in label
    assert change == "+10.0% (worse)"  # the same text, the same units: comparable
