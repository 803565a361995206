"""GGUF export of a vocabulary-trimmed model: the file's vocabulary is the trimmed one (tokens in new-id
order, the surviving merges, renumbered special ids, one embedding row per kept token), from a plain
transformers folder and from a SlimLab result; a trimmed model beside its untrimmed tokenizer is refused;
and, with llama-cpp-python, llama.cpp tokenizes like the trimmed tokenizer and gives the model's logits."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf_reference import gguf_logits
from tiny import SAMPLE_TEXT, make_config, make_tokenizer, random_calibration

from engine.compress import compress
from engine.compressed import load_compressed, save_compressed
from engine.errors import ConfigError
from engine.export import export
from engine.export.gguf_file import write_gguf
from engine.loader import load_model
from engine.models.adapters import adapter_for
from engine.models.demo import demo_dir
from engine.recipes import CalibrationSpec, Recipe, VocabularySpec
from engine.transforms.vocabulary import kept_token_ids, token_counts, trim_model, trim_tokenizer

STOP = "<|stop|>"  # a special token added last and made the eos: trimming moves its id down
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Structured compression removes rows and columns.",
         "naïve Zürich 東京 🙂 kerfuffle  \n\n zzz 1234", f"{STOP}the fox{STOP}"]


def _tokenizer(source: str):
    """The tiny test tokenizer or the demo's real one (files only), each with ``STOP`` as its eos."""
    from transformers import AutoTokenizer

    if source == "tiny":
        tok = make_tokenizer()
    else:
        if not (demo_dir() / "tokenizer.json").is_file():
            pytest.skip(f"the demo tokenizer is not cached ({demo_dir()})")
        tok = AutoTokenizer.from_pretrained(demo_dir())
    tok.add_tokens([STOP], special_tokens=True)
    tok.eos_token = STOP
    return tok


def _save_trimmed(folder: Path, source: str, keep: int, tie: bool = True, tokenizer_trimmed: bool = True):
    """A tiny random llama over ``source``'s vocabulary, trimmed to the tokens of SAMPLE_TEXT and saved as
    a transformers folder; (folder, trimmed tokenizer, kept ids). ``tokenizer_trimmed=False`` saves the
    original tokenizer beside the trimmed model (the mistake the exporter must refuse)."""
    tok = _tokenizer(source)
    torch.manual_seed(0)
    config = make_config("llama", len(tok), tie_word_embeddings=tie, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    kept = kept_token_ids(tok, token_counts(tok, [SAMPLE_TEXT]), keep=keep)
    assert len(kept) < len(tok) and tok.convert_tokens_to_ids(STOP) == kept[-1] != len(kept) - 1
    trimmed_tok = trim_tokenizer(tok, kept)
    assert trimmed_tok.eos_token_id == len(kept) - 1  # renumbered
    trim_model(model, adapter_for(model), kept).save_pretrained(folder)
    (trimmed_tok if tokenizer_trimmed else tok).save_pretrained(folder)
    return folder, trimmed_tok, kept


def _merges(tokenizer) -> list[str]:
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _assert_trimmed_vocab(path: Path, tok, n: int, tie: bool = True) -> None:
    """The file's vocabulary is ``tok``'s ``n`` tokens, special ids and merges; the vocabulary matrices have n rows."""
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    rows = {t.name: int(t.shape[-1]) for t in reader.tensors}  # gguf lists a [rows, cols] matrix as (cols, rows)
    assert len(tok) == n
    assert fields[f"{fields['general.architecture']}.vocab_size"] == n
    assert fields["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(n)))
    assert fields["tokenizer.ggml.merges"] == _merges(tok) and 0 < len(_merges(tok))
    for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        assert fields[f"tokenizer.ggml.{key}_token_id"] == getattr(tok, f"{name}_token_id")
    assert fields["tokenizer.ggml.token_type"][tok.eos_token_id] == gguf.TokenType.CONTROL
    assert rows["token_embd.weight"] == n and rows.get("output.weight", n) == n and ("output.weight" in rows) != tie


def _model_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


@pytest.mark.parametrize("source, keep, tie", [("tiny", 290, True), ("tiny", 290, False),
                                               pytest.param("smollm2", 600, True, marks=pytest.mark.demo)])
def test_a_trimmed_transformers_folder_exports_its_trimmed_vocabulary(tmp_path, source, keep, tie):
    folder, tok, kept = _save_trimmed(tmp_path / "trimmed", source, keep, tie)
    lm = load_model(str(folder), device="cpu", dtype="float32", log=lambda _m: None)
    write_gguf(tmp_path / "m.gguf", lm, folder, "f32", "trimmed")
    _assert_trimmed_vocab(tmp_path / "m.gguf", tok, len(kept), tie)
    ids = tok.encode(TEXTS[0] + TEXTS[3], add_special_tokens=False)
    torch.testing.assert_close(gguf_logits(tmp_path / "m.gguf", ids), _model_logits(lm.model, ids), atol=1e-4, rtol=0)


def test_a_trimmed_slimlab_result_exports_its_trimmed_vocabulary(tmp_path):
    folder, tok, kept = _save_trimmed(tmp_path / "trimmed", "tiny", 290)
    lm = load_model(str(folder), device="cpu", dtype="float32", log=lambda _m: None)
    result = compress(lm, "shortgpt", 0.34, calibration=random_calibration(len(kept)))
    saved = save_compressed(result, tmp_path / "result")
    _assert_exports_like(saved, tok, len(kept), tmp_path / "m.gguf")


def test_a_result_trimmed_by_the_recipe_stage_exports_its_trimmed_vocabulary(tiny_dirs, data_dir, tmp_path):
    lm = load_model(str(tiny_dirs["llama"]), device="cpu", log=lambda _m: None)
    recipe = Recipe(model=lm.spec, method="fasp", ratio=0.3, calibration=CalibrationSpec("wikitext2:validation", 8, 64),
                    vocabulary=VocabularySpec(keep=285, tokens=4000, seqlen=64))
    result = compress(lm, recipe, data_dir=str(data_dir))
    n = len(result.tokenizer)
    tokens = result.tokenizer.convert_ids_to_tokens(list(range(n)))
    assert n < len(lm.tokenizer) and tokens != lm.tokenizer.convert_ids_to_tokens(list(range(n)))  # not a prefix
    _assert_exports_like(save_compressed(result, tmp_path / "result"), result.tokenizer, n, tmp_path / "m.gguf")


def _assert_exports_like(result: Path, tok, n: int, path: Path) -> None:
    """``slimlab export`` of a saved trimmed result: ``tok``'s vocabulary, and the result's logits on its ids."""
    export(result, "gguf", "f32", path)
    _assert_trimmed_vocab(path, tok, n)
    ids = tok.encode(TEXTS[1] + TEXTS[2], add_special_tokens=False)
    want = _model_logits(load_compressed(result, device="cpu", dtype="float32").model, ids)
    torch.testing.assert_close(gguf_logits(path, ids), want, atol=1e-4, rtol=0)


def test_a_trimmed_model_beside_its_untrimmed_tokenizer_is_refused(tmp_path):
    folder, _tok, kept = _save_trimmed(tmp_path / "trimmed", "tiny", 290, tokenizer_trimmed=False)
    lm = load_model(str(folder), device="cpu", dtype="float32", log=lambda _m: None)
    with pytest.raises(ConfigError, match=f"{len(lm.tokenizer)} tokens.*{len(kept)} rows"):
        write_gguf(tmp_path / "m.gguf", lm, folder, "f32", "mismatched")
    assert not (tmp_path / "m.gguf").exists() or (tmp_path / "m.gguf").stat().st_size == 0


@pytest.mark.llamacpp
@pytest.mark.parametrize("source, keep", [("tiny", 290), pytest.param("smollm2", 600, marks=pytest.mark.demo)])
def test_llama_cpp_runs_a_trimmed_model_like_transformers(tmp_path, source, keep):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'slimlab[llamacpp]'")
    from engine.evaluate.llamacpp import open_gguf, same_tokenization

    folder, tok, kept = _save_trimmed(tmp_path / "trimmed", source, keep)
    lm = load_model(str(folder), device="cpu", dtype="float32", log=lambda _m: None)
    write_gguf(tmp_path / "m.gguf", lm, folder, "f32", "trimmed")
    llm = open_gguf(tmp_path / "m.gguf", n_ctx=128, threads=1, kv_f32=True)
    try:
        assert llm.n_vocab() == len(kept) and llm.token_eos() == tok.eos_token_id
        assert same_tokenization(llm, tok, TEXTS + SAMPLE_TEXT.split(". ")[:3])
        ids = tok.encode(TEXTS[2], add_special_tokens=False)
        assert len(ids) > len(TEXTS[2].split())  # unseen text falls back to shorter tokens, not unknowns
        llm.reset()
        llm.eval(ids)
        np.testing.assert_allclose(np.array(llm.scores[: len(ids)]), _model_logits(lm.model, ids).numpy(),
                                   atol=1e-4, rtol=0)
    finally:
        llm.close()
