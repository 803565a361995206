"""Tiny randomly initialised models of every supported architecture, built from configs,
with a small BPE tokenizer trained on the fly, saved as ordinary checkpoint folders."""
from __future__ import annotations

from pathlib import Path

import torch

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Structured compression removes rows and columns "
    "from weight matrices so that the model becomes smaller and faster. Principal components of the "
    "residual stream show how many directions carry most of the signal. "
) * 40

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "opt", "gemma3")
MODEL_TYPES = {"gemma3": "gemma3_text"}  # where a tiny architecture's config name differs from ours


def make_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([SAMPLE_TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    fast.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant: {% endif %}"
    )
    return fast


def make_config(arch: str, vocab_size: int, **overrides):
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=256)
    if arch == "opt":
        cfg = dict(common, ffn_dim=128, word_embed_proj_dim=64, do_layer_norm_before=True, enable_bias=True,
                   bos_token_id=1, eos_token_id=2, pad_token_id=2)
    else:
        cfg = dict(common, intermediate_size=128, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                   tie_word_embeddings=arch in ("llama", "qwen3"), bos_token_id=1, eos_token_id=2,
                   pad_token_id=2)
        if arch == "qwen2":
            cfg["attention_bias"] = True  # qwen2 always has q/k/v biases; the config ignores this
        if arch == "llama":
            cfg["attention_bias"] = False
        if arch == "gemma3":  # two sliding-window layers (a window shorter than the test sequences), one global
            cfg.update(layer_types=["sliding_attention", "full_attention", "sliding_attention"], sliding_window=8,
                       query_pre_attn_scalar=16, tie_word_embeddings=True)
    cfg.update(overrides)
    return AutoConfig.for_model(MODEL_TYPES.get(arch, arch), **cfg)


def make_model(arch: str, seed: int = 0, **overrides):
    """(model, tokenizer) with random weights; norms get random scales so fusion is tested."""
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(seed)
    config = make_config(arch, len(tok), **overrides)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif "norm" in name and name.endswith("bias"):
                p.normal_(0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
    return model, tok


def save_model_dir(path: Path, arch: str, seed: int = 0, **overrides) -> Path:
    model, tok = make_model(arch, seed, **overrides)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def random_calibration(vocab: int, n: int = 8, seqlen: int = 32):
    """A seeded calibration of random token ids (batches of 4), for passes that need no real text."""
    from engine import CalibrationSpec

    g = torch.Generator().manual_seed(0)
    return CalibrationSpec("random", n, seqlen, 0, 4, tokens=torch.randint(3, vocab, (n, seqlen), generator=g))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits
