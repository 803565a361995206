"""Vocabulary trimming as a recipe stage: after the method (and recovery), sized before the run,
saved with its tokenizer, replayed from the saved recipe, refused cleanly when it cannot apply."""
from __future__ import annotations

import json

import pytest
import torch
from tiny import logits

from engine import compress, load_compressed, load_model, planned_size, save_compressed
from engine.errors import ConfigError
from engine.recipes import CalibrationSpec, Recipe, VocabularySpec

CALIB = CalibrationSpec("wikitext2:validation", nsamples=8, seqlen=64)
VOCAB = VocabularySpec(keep=285, tokens=4000, seqlen=64)  # of 320: the tiny tokenizer's 259 forced tokens + 26


def _recipe(lm, arch_vocab=VOCAB, **fields) -> Recipe:
    return Recipe(model=lm.spec, method="fasp", ratio=0.3, calibration=CALIB, vocabulary=arch_vocab, **fields)


@pytest.mark.parametrize("arch", ["llama", "opt", "gemma3"])
def test_the_result_keeps_the_kept_tokens_logits_and_is_sized_exactly(tiny_dirs, data_dir, arch):
    lm = load_model(str(tiny_dirs[arch]), device="cpu")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    plain = compress(lm, _recipe(lm, VocabularySpec()), data_dir=str(data_dir))
    trimmed = compress(lm, _recipe(lm), data_dir=str(data_dir))
    planned = planned_size(lm, _recipe(lm), data_dir=str(data_dir))

    vocab = trimmed.model.get_input_embeddings().num_embeddings
    assert 285 <= vocab < len(lm.tokenizer) and len(trimmed.tokenizer) == vocab == trimmed.accounting.vocab_size
    rows = trimmed.model.get_input_embeddings().weight.shape[1] * (1 if trimmed.accounting.tied_embeddings else 2)
    assert plain.accounting.params_total - trimmed.accounting.params_total == (len(lm.tokenizer) - vocab) * rows
    assert planned.planned.params_total == trimmed.accounting.params_total  # sized before the run, exactly
    assert trimmed.plots["vocabulary"] == {"kept": vocab, "original": len(lm.tokenizer)}
    assert "vocabulary" in trimmed.stage_seconds and trimmed.recipe.vocabulary == VOCAB

    # the kept tokens keep their logits: new id i is old id kept[i]
    kept = [lm.tokenizer.convert_tokens_to_ids(t) for t in trimmed.tokenizer.convert_ids_to_tokens(range(vocab))]
    assert kept == sorted(kept) and max(kept) >= 259  # merged tokens were kept, in the original's order
    new = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    old = torch.tensor(kept)[new]
    torch.testing.assert_close(logits(trimmed.model, new), logits(plain.model, old)[..., kept])
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())  # the original is untouched
    assert lm.model.get_input_embeddings().num_embeddings == len(lm.tokenizer) == 320


def test_saved_result_reloads_with_its_tokenizer_and_replays(tiny_dirs, data_dir, tmp_path):
    lm = load_model(str(tiny_dirs["llama"]), device="cpu")
    result = compress(lm, _recipe(lm), data_dir=str(data_dir))
    folder = save_compressed(result, tmp_path / "out")
    again = load_compressed(folder, device="cpu")
    ids = result.tokenizer("the cat sat, naïvely", return_tensors="pt")["input_ids"]
    assert again.tokenizer("the cat sat, naïvely", return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    torch.testing.assert_close(logits(again.model, ids), logits(result.model, ids))
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == len(result.tokenizer)

    replayed = Recipe.from_dict(json.loads((folder / "slimlab.json").read_text()))
    assert replayed.vocabulary == VOCAB
    twin = compress(lm, replayed, data_dir=str(data_dir))
    assert twin.tokenizer.get_vocab() == result.tokenizer.get_vocab()
    torch.testing.assert_close(logits(twin.model, ids), logits(result.model, ids))


def test_off_by_default_and_old_recipes_read_without_it():
    recipe = Recipe(method="fasp")
    assert not recipe.vocabulary.enabled and "vocabulary" not in recipe.to_dict()
    assert Recipe.from_dict(recipe.to_dict()).vocabulary == VocabularySpec()
    on = Recipe(method="fasp", vocabulary=VocabularySpec(keep=1000))
    assert Recipe.from_dict(json.loads(json.dumps(on.to_dict()))) == on
    assert on.label().endswith("+ vocabulary 1,000")


@pytest.mark.parametrize("value, match", [
    ({"keep": -1}, "vocabulary keep"), ({"keep": 1.5}, "vocabulary keep"), ({"tokens": 0}, "vocabulary tokens"),
    ({"source": "nosuch:split"}, "vocabulary source"), ({"keep": 10, "extra": 1}, "extra"), ("32768", "mapping"),
])
def test_bad_vocabulary_fields_are_refused_without_a_model(value, match):
    with pytest.raises(ConfigError, match=match):
        Recipe.from_dict({"method": "fasp", "vocabulary": value}).validate()


def test_a_tokenizer_it_cannot_trim_is_refused_and_the_original_kept(tiny_dirs, data_dir, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    lm = load_model(str(tiny_dirs["llama"]), device="cpu")
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    lm.tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[UNK]")
    recipe = _recipe(lm, VocabularySpec(keep=1, tokens=4000, seqlen=64))
    with pytest.raises(ConfigError, match="BPE"):
        planned_size(lm, recipe, data_dir=str(data_dir))
    with pytest.raises(ConfigError, match="BPE"):
        compress(lm, recipe, data_dir=str(data_dir))
    assert lm.model.get_input_embeddings().num_embeddings == 320


def test_the_cli_trims_saves_and_says_so(tiny_dirs, data_dir, tmp_path, capsys):
    from engine.cli import main

    out = tmp_path / "trimmed"
    argv = ["compress", str(tiny_dirs["qwen2"]), "--method", "fasp", "--ratio", "0.3", "--calib", "wikitext2:validation",
            "--nsamples", "8", "--seqlen", "64", "--vocabulary", "285", "--vocabulary-tokens", "4000",
            "--data-dir", str(data_dir), "--out", str(out)]
    assert main(argv) == 0
    kept = json.loads((out / "config.json").read_text())["vocab_size"]
    assert f"vocabulary: {kept:,} of 320 tokens kept" in capsys.readouterr().out
    recipe = Recipe.from_dict(json.loads((out / "slimlab.json").read_text()))
    assert recipe.vocabulary == VocabularySpec(keep=285, tokens=4000)
    assert len(load_compressed(out, device="cpu").tokenizer) == kept


def test_keeping_more_tokens_than_the_tokenizer_has_is_refused(tiny_dirs, data_dir):
    lm = load_model(str(tiny_dirs["llama"]), device="cpu")
    for call in (planned_size, compress):
        with pytest.raises(ConfigError, match="the tokenizer has 320 tokens; 0 keeps them all"):
            call(lm, _recipe(lm, VocabularySpec(keep=321)), data_dir=str(data_dir))
