"""Vocabulary trimming: the kept ids (closed under BPE merges), the trimmed tokenizer (same tokens for
text it covers, any text still round-trips) and the trimmed model (the kept columns of the logits)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.errors import ConfigError
from engine.models.adapters import adapter_for
from engine.transforms.vocabulary import kept_token_ids, token_counts, trim_model, trim_tokenizer
from tiny import ARCHS, SAMPLE_TEXT, logits, make_tokenizer

SEEN = "The quick brown fox jumps over the lazy dog."
UNSEEN = ["Structured compression removes rows and columns.", "naïve Zürich 東京 🙂", "kerfuffle  \n\n zzz",
          "Principal components of the residual stream"]


def _bpe(tokenizer) -> tuple[dict, dict[str, tuple[str, str]]]:
    """(the tokenizer's JSON, {merge result: (left, right)}): every tokenizer tested here has one merge per result."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    parents = {}
    for m in state["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        assert a + b not in parents, "several merges make one token: the closure check below assumes one"
        parents[a + b] = (a, b)
    return state, parents


def _forced(tokenizer) -> set[int]:
    """Specials, added tokens and base tokens (those no merge produces), read from the JSON independently."""
    state, parents = _bpe(tokenizer)
    base = {i for t, i in state["model"]["vocab"].items() if t not in parents}
    return set(tokenizer.all_special_ids) | {t["id"] for t in state["added_tokens"]} | base


def _closure(tokenizer, ids) -> set[int]:
    """``ids`` with their merge ancestors, recursively (one merge per result, so the ancestry is unique)."""
    state, parents = _bpe(tokenizer)
    vocab = state["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    out, todo = set(), [by_id[i] for i in ids]
    while todo:
        token = todo.pop()
        if vocab[token] not in out:
            out.add(vocab[token])
            todo.extend(parents.get(token, ()))
    return out


def _assert_closed(tokenizer, kept: list[int]) -> None:
    state, parents = _bpe(tokenizer)
    vocab = state["model"]["vocab"]
    kept_tokens = {t for t, i in vocab.items() if i in set(kept)}
    for token in kept_tokens:
        if token in parents:
            a, b = parents[token]
            assert a in kept_tokens and b in kept_tokens, f"{token!r} kept without its parents {a!r}, {b!r}"


def _assert_tokenizes_the_same(original, trimmed, kept: list[int], covered: list[str], any_text: list[str]) -> None:
    new_id = {old: new for new, old in enumerate(kept)}
    for text in covered:
        old = original.encode(text, add_special_tokens=False)
        assert set(old) <= set(kept), "the covered text must use kept tokens only"
        assert trimmed.encode(text, add_special_tokens=False) == [new_id[i] for i in old]
    for text in any_text:
        want = original.decode(original.encode(text, add_special_tokens=False))
        assert trimmed.decode(trimmed.encode(text, add_special_tokens=False)) == want


# --- kept ids ----------------------------------------------------------------------------
def test_kept_ids_are_forced_tokens_plus_the_most_frequent_closed_under_merges():
    tok = make_tokenizer()
    forced = _forced(tok)
    assert len(forced) == 259  # 256 byte-alphabet symbols and three specials; 61 merges on top
    assert kept_token_ids(tok, token_counts(tok, [SAMPLE_TEXT]), keep=0) == sorted(forced)

    counts = token_counts(tok, [SAMPLE_TEXT])
    frequent = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if i not in forced]
    previous: set[int] = set(forced)
    for extra in (1, 5, 20, 40):
        kept = kept_token_ids(tok, counts, keep=len(forced) + extra)
        assert kept == sorted(set(kept)) and forced <= set(kept)
        _assert_closed(tok, kept)
        assert len(kept) >= len(forced) + extra  # enough distinct tokens were counted to fill it
        longest = max(len(tok.convert_ids_to_tokens(i)) for i in kept)
        assert len(kept) < len(forced) + extra + 2 * longest  # only the last token's ancestry overshoots
        assert frequent[0] in kept and previous <= set(kept)  # growing keep only adds
        previous = set(kept)
        # exactly: the fewest most-frequent tokens whose closure reaches keep, nothing else
        m = next(m for m in range(len(frequent) + 1)
                 if len(forced | _closure(tok, frequent[:m])) >= len(forced) + extra)
        assert set(kept) == forced | _closure(tok, frequent[:m])
    assert set(kept_token_ids(tok, counts, keep=10_000)) == forced | _closure(tok, counts)  # nothing uncounted


def test_the_most_frequent_tokens_come_first():
    tok = make_tokenizer()
    counts = token_counts(tok, [SAMPLE_TEXT])
    forced = _forced(tok)
    ranked = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if i not in forced]
    kept = set(kept_token_ids(tok, counts, keep=len(forced) + 10))
    # the top tokens are in; the least frequent merged token is not (its ancestors may be)
    assert set(ranked[:5]) <= kept and ranked[-1] not in kept


def test_a_tokenizer_that_is_not_bpe_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]")
    with pytest.raises(ConfigError, match="WordPiece"):
        kept_token_ids(fast, {1: 3}, keep=2)
    with pytest.raises(ConfigError, match="fast"):
        kept_token_ids(object(), {}, keep=2)


# --- the trimmed tokenizer -----------------------------------------------------------------
def test_trimmed_tokenizer_keeps_covered_text_and_round_trips_any_text():
    tok = make_tokenizer()
    before = tok.backend_tokenizer.to_str()
    kept = kept_token_ids(tok, token_counts(tok, [SEEN]), keep=1000)
    trimmed = trim_tokenizer(tok, kept)
    assert tok.backend_tokenizer.to_str() == before  # the input is untouched
    assert len(trimmed) == len(kept) < len(tok)
    _assert_tokenizes_the_same(tok, trimmed, kept, [SEEN, SEEN.lower()[:20]], UNSEEN + [SEEN])
    longer = trimmed.encode(UNSEEN[0], add_special_tokens=False)
    assert len(longer) > len(tok.encode(UNSEEN[0], add_special_tokens=False))  # its merged tokens are gone
    new_id = {old: new for new, old in enumerate(kept)}
    for name in ("bos", "eos", "unk", "pad"):
        assert getattr(trimmed, f"{name}_token") == getattr(tok, f"{name}_token")
        assert getattr(trimmed, f"{name}_token_id") == new_id[getattr(tok, f"{name}_token_id")]
    messages = [{"role": "user", "content": "naïve fox"}]
    rendered = trimmed.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = trimmed.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert trimmed.decode(ids) == rendered and trimmed.padding_side == tok.padding_side


def test_trimmed_tokenizer_saves_and_reloads(tmp_path):
    from transformers import AutoTokenizer

    tok = make_tokenizer()
    kept = kept_token_ids(tok, token_counts(tok, [SEEN]), keep=1000)
    trimmed = trim_tokenizer(tok, kept)
    trimmed.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for text in UNSEEN + [SEEN]:
        assert again.encode(text) == trimmed.encode(text)
    assert again.chat_template == tok.chat_template


# --- the trimmed model ------------------------------------------------------------------------
def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() lists a tied weight once


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tie", [True, False])
def test_trimmed_model_gives_the_kept_logits(tiny, arch, tie, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = tiny(arch, tie_word_embeddings=tie)
    adapter = adapter_for(model)
    assert adapter.is_tied(model) == tie
    original_state = {k: v.clone() for k, v in model.state_dict().items()}
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    head = adapter.head(model)
    bias_rows = 0 if head.bias is None else 1

    kept = kept_token_ids(tok, token_counts(tok, [SEEN]), keep=1000)
    trimmed = trim_model(model, adapter, kept)
    trimmed_tok = trim_tokenizer(tok, kept)

    old_ids = torch.tensor([tok.encode(SEEN, add_special_tokens=False)])
    new_ids = torch.tensor([trimmed_tok.encode(SEEN, add_special_tokens=False)])
    new_id = {old: new for new, old in enumerate(kept)}
    assert new_ids.tolist() == [[new_id[i] for i in old_ids[0].tolist()]]
    want = logits(model, old_ids)[..., kept]
    got = logits(trimmed, new_ids)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=1e-5)

    dropped = (vocab - len(kept)) * (hidden * (1 if tie else 2) + (0 if tie else bias_rows))
    assert _params(model) - _params(trimmed) == dropped
    assert adapter.is_tied(trimmed) == tie and trimmed.config.vocab_size == len(kept)
    assert adapter.token_embedding(trimmed).weight.dtype == adapter.token_embedding(model).weight.dtype
    assert type(adapter.token_embedding(trimmed)) is type(adapter.token_embedding(model))  # Gemma's scale
    for key, value in model.state_dict().items():
        assert torch.equal(value, original_state[key]), f"{key} of the original changed"
    assert model.config.vocab_size == vocab
    for cfg_old, cfg_new in ((model.config, trimmed.config), (model.generation_config, trimmed.generation_config)):
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            old = getattr(cfg_old, key)
            if old is not None:
                assert getattr(cfg_new, key) == ([new_id[i] for i in old] if isinstance(old, list) else new_id[old])

    trimmed.save_pretrained(tmp_path)
    trimmed_tok.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    again_tok = AutoTokenizer.from_pretrained(tmp_path)
    assert again_tok.encode(SEEN, add_special_tokens=False) == new_ids[0].tolist()
    assert adapter_for(again).is_tied(again) == tie and _params(again) == _params(trimmed)
    assert torch.equal(logits(again, new_ids), got)


def test_trim_model_rejects_bad_ids(tiny):
    model, _tok = tiny("llama")
    adapter = adapter_for(model)
    with pytest.raises(ConfigError, match="ascending"):
        trim_model(model, adapter, [3, 1, 2])
    with pytest.raises(ConfigError, match="lie in"):
        trim_model(model, adapter, [0, 1, 2, model.config.vocab_size])
    with pytest.raises(ConfigError, match="eos_token_id"):
        trim_model(model, adapter, [0, 1, 5, 6])  # eos (2) dropped


def test_an_eos_list_is_renumbered(tiny):
    model, tok = tiny("qwen2")
    model.generation_config.eos_token_id = [2, 0]
    kept = kept_token_ids(tok, {}, keep=0)
    trimmed = trim_model(model, adapter_for(model), kept)
    assert trimmed.generation_config.eos_token_id == [kept.index(2), kept.index(0)]
    assert model.generation_config.eos_token_id == [2, 0]


# --- the real tokenizers (files only, never weights) -----------------------------------------------
def _english(data_dir: Path, chars: int = 6000) -> str:
    return (data_dir / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")[:chars]


def _real_tokenizers() -> list:
    from engine.cache import cache_root

    demo = cache_root() / "demo" / "SmolLM2-135M-Instruct" / "tokenizer.json"
    gemma = sorted((cache_root() / "gguf").glob("*/tokenizer.json"))
    gemma = [p for p in gemma if json.loads(p.with_name("config.json").read_text()).get("model_type", "")
             .startswith("gemma3")] if gemma else []
    return [pytest.param(demo, 20_000, id="smollm2"),
            # Gemma's forced tokens alone are 25,865 (19,481 base + 6,384 added): keep more, so the corpus counts
            pytest.param(gemma[0] if gemma else None, 30_000, id="gemma3")]


@pytest.mark.demo
@pytest.mark.parametrize("path,keep", _real_tokenizers())
def test_real_tokenizers_trim_and_round_trip(data_dir, path, keep):
    from transformers import AutoTokenizer

    if path is None or not path.exists():
        pytest.skip(f"tokenizer not cached ({path})")
    tok = AutoTokenizer.from_pretrained(path.parent)
    text = _english(data_dir)
    counts = token_counts(tok, [text, *text.split("\n")])
    kept = kept_token_ids(tok, counts, keep)
    assert set(counts) <= set(kept) and len(kept) < len(tok)
    if path.parent.name == "SmolLM2-135M-Instruct":
        assert len(kept) < keep  # a few KB of text counts only some of the room
        _assert_closed(tok, kept)
    trimmed = trim_tokenizer(tok, kept)
    covered = [line for line in text.split("\n") if line.strip()][:20]
    _assert_tokenizes_the_same(tok, trimmed, kept, covered + [text],
                               UNSEEN + ["Supercalifragilistic antidisestablishmentarianism: €3½ ≠ ∞ — ok?"])
    new_id = {old: new for new, old in enumerate(kept)}
    assert trimmed.encode(covered[0]) == [new_id[i] for i in tok.encode(covered[0])]  # with its specials (Gemma's bos)


def test_fill_adds_never_counted_tokens_in_merge_order_after_the_counted_ones():
    tok = make_tokenizer()
    counts = token_counts(tok, [SEEN])
    counted_only = kept_token_ids(tok, counts, keep=1000)
    assert len(counted_only) < len(tok)  # without fill, unseen tokens stay out
    filled = kept_token_ids(tok, counts, keep=len(counted_only) + 5, fill=True)
    assert set(counted_only) < set(filled) and len(filled) >= len(counted_only) + 5
    _assert_closed(tok, filled)
    state = json.loads(tok.backend_tokenizer.to_str())
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in state["model"]["merges"]]
    vocab = state["model"]["vocab"]
    unseen_in_merge_order = [vocab[a + b] for a, b in merges if vocab[a + b] not in counted_only]
    assert unseen_in_merge_order[0] in filled  # the earliest merge the counts missed is the first filled
    assert unseen_in_merge_order[-1] not in filled
    assert kept_token_ids(tok, counts, keep=len(tok), fill=True) == list(range(len(tok)))  # fills everything
    assert kept_token_ids(tok, {}, keep=len(_forced(tok)) + 3, fill=True)  # no counts at all: merge order alone
