"""A transformers GPT-2-style BPE tokenizer written into GGUF's tokenizer fields.

Tokens come from the tokenizer itself (id order, added tokens typed control/user-defined);
merges, special-token ids, add-BOS/EOS flags and the chat template come from gguf's own
``SpecialVocab`` reading the saved folder. llama.cpp re-implements the pre-tokenizer (the
regex that splits text before BPE) per model family and picks it by the ``tokenizer.ggml.pre``
name, so the name is chosen from the tokenizer.json's pre-tokenizer; one it does not know
falls back to ``default`` with a note, and the llama.cpp test compares tokenizations.

The vocabulary's size is the embedding's row count, so a vocabulary-trimmed model (``transforms.vocabulary``)
exports as it is once its trimmed tokenizer is saved beside it. A tokenizer with more tokens than the
embedding has rows is refused: written, it would be cut to the first rows' tokens, and text would map to
the wrong rows without any error.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import gguf

from ..errors import ConfigError
from .base import NotExpressible

BYTE_LEVEL = {"type": "ByteLevel", "use_regex": True}  # GPT-2's split, then bytes -> unicode
PRE_TOKENIZERS: tuple[tuple[str, list[dict]], ...] = (  # llama.cpp's name, the pre_tokenizer steps it runs
    ("gpt-2", [BYTE_LEVEL]),
    ("smollm", [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]),  # digits one by one
)


def _steps(pre: Optional[dict]) -> list[dict]:
    if pre is None:
        return []
    return pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]


def pre_tokenizer_name(tokenizer_json: dict) -> Optional[str]:
    """llama.cpp's name for this tokenizer's pre-tokenizer, or None when it is not one we know."""
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    for name, wanted in PRE_TOKENIZERS:
        if len(steps) == len(wanted) and all(all(s.get(k) == v for k, v in w.items()) for s, w in zip(steps, wanted)):
            return name
    return None


def add_vocab(writer: gguf.GGUFWriter, folder: Path, tokenizer, n_vocab: int) -> list[str]:
    """Write the tokenizer fields; returns notes for the user."""
    if len(tokenizer) > n_vocab:
        raise ConfigError(f"The tokenizer in '{folder}' has {len(tokenizer):,} tokens but the model's embedding only "
                          f"{n_vocab:,} rows: a vocabulary-trimmed model saved with its original tokenizer? Save the "
                          "trimmed tokenizer (transforms.vocabulary.trim_tokenizer) beside the model and export again.")
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise NotExpressible(f"'{folder}' has no tokenizer.json; the GGUF exporter writes fast BPE tokenizers.")
    data = json.loads(path.read_text())
    if data["model"]["type"] != "BPE" or (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise NotExpressible("this exporter writes GPT-2-style byte-level BPE tokenizers only "
                             f"(this one is {data['model']['type']}).")
    notes = []
    pre = pre_tokenizer_name(data)
    if pre is None:
        notes.append("tokenizer pre-splitting not recognised; llama.cpp will split text its default way, "
                      "so tokenization may differ from transformers")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre or "default")
    tokens, types = _tokens(tokenizer, n_vocab)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)
    return notes


def _tokens(tokenizer, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token strings in id order; ids past the tokenizer (padded embedding rows) are unused."""
    added = tokenizer.added_tokens_decoder
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        elif i in vocab:
            tokens.append(vocab[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, types
