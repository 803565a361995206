"""An exported GGUF run in llama.cpp itself (``llama-cpp-python``, the optional extra
``llamacpp``), side by side with the transformers model it came from.

``compare`` is the acceptance check of a GGUF export: greedy continuations token for token
and perplexity on the same windows. Both sides get the same token ids (transformers'
tokenization), so the check is about the weights and the graph; ``same_tokenization``
checks llama.cpp's own tokenizer separately.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .perplexity import window_nll

INSTALL_HINT = "pip install 'slimlab[llamacpp]' (builds llama-cpp-python from source: minutes)"


def llama_cpp_module() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError(f"llama.cpp is not installed; {INSTALL_HINT}.") from None
    return llama_cpp


def open_gguf(path: "str | Path", n_ctx: int = 1024, threads: "int | None" = None, logits_all: bool = True,
              kv_f32: bool = False):
    """A llama.cpp context on ``path`` (CPU; ``logits_all`` keeps every position's logits).

    llama.cpp keeps its KV cache in f16 by default, which alone moves f32 logits by ~1e-4;
    ``kv_f32`` keeps it in f32, so an f32 file is computed in f32 throughout."""
    llama_cpp = llama_cpp_module()
    threads = threads or os.cpu_count() or 1
    kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if kv_f32 else {}
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                           n_batch=n_ctx, logits_all=logits_all, verbose=False, **kv)


def last_logits(llm) -> np.ndarray:
    """The logits of the last evaluated token, read from the context (``Llama.scores`` is only
    filled with ``logits_all``)."""
    ptr = llama_cpp_module().llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def llama_greedy(llm, ids: Sequence[int], steps: int) -> list[int]:
    """``steps`` argmax tokens after ``ids`` (no stop at EOS: both sides must agree on every step)."""
    llm.reset()
    llm.eval(list(ids))
    out = []
    for _ in range(steps):
        token = int(np.argmax(last_logits(llm)))
        out.append(token)
        llm.eval([token])
    return out


@torch.inference_mode()
def hf_greedy(model, ids: Sequence[int], steps: int) -> list[int]:
    """The same loop in transformers (each step re-reads the whole sequence: no cache API to
    track across transformers versions, and at 32 steps the cost is small)."""
    seq = list(ids)
    for _ in range(steps):
        seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


def llama_window_nll(llm, windows: torch.Tensor) -> tuple[float, int]:
    """Summed NLL (float64 log-softmax) and predicted-token count, as ``window_nll`` counts them."""
    total, count = 0.0, 0
    for window in windows.tolist():
        llm.reset()
        llm.eval(window)
        logits = torch.from_numpy(np.array(llm.scores[: len(window) - 1], dtype=np.float64))
        total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(window[1:]), reduction="sum"))
        count += len(window) - 1
    return total, count


@dataclass
class Comparison:
    prompts: int
    steps: int
    greedy_matched: int  # prompts whose continuation is identical token for token
    first_divergence: list  # per prompt: the step where llama.cpp first differs, or None
    ppl_transformers: float
    ppl_llamacpp: float
    windows: int
    seqlen: int

    @property
    def ppl_rel_diff(self) -> float:
        return abs(self.ppl_llamacpp - self.ppl_transformers) / self.ppl_transformers

    def to_dict(self) -> dict:
        return asdict(self) | {"ppl_rel_diff": self.ppl_rel_diff}


def _divergence(a: list[int], b: list[int]) -> "int | None":
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def compare(model, greedy_path: "str | Path | None", ppl_path: "str | Path | None", prompts: Sequence[Sequence[int]],
            steps: int, windows: torch.Tensor, threads: "int | None" = None) -> Comparison:
    """Greedy continuations of ``prompts`` in the GGUF at ``greedy_path`` (f32 KV cache) vs
    ``model``, and perplexity over ``windows`` in the GGUF at ``ppl_path`` (llama.cpp's default
    f16 KV cache) vs ``model``."""
    seqlen = windows.shape[1]
    llm = open_gguf(greedy_path, n_ctx=max(len(p) for p in prompts) + steps + 1, threads=threads, kv_f32=True)
    firsts = [_divergence(llama_greedy(llm, p, steps), hf_greedy(model, p, steps)) for p in prompts]
    llm.close()
    llm = open_gguf(ppl_path, n_ctx=seqlen, threads=threads)
    nll_cpp, count = llama_window_nll(llm, windows)
    llm.close()
    nll_hf, _ = window_nll(model, windows)
    return Comparison(prompts=len(prompts), steps=steps, greedy_matched=sum(f is None for f in firsts),
                      first_divergence=firsts, ppl_transformers=math.exp(nll_hf / count),
                      ppl_llamacpp=math.exp(nll_cpp / count), windows=windows.shape[0], seqlen=seqlen)


def same_tokenization(llm, tokenizer, texts: Sequence[str]) -> bool:
    """llama.cpp's tokenizer gives transformers' ids for every text (no BOS added on either side)."""
    return all(llm.tokenize(t.encode(), add_bos=False, special=True) == tokenizer(t, add_special_tokens=False)["input_ids"]
               for t in texts)


@dataclass
class GgufSpeed:
    """Timings of one GGUF in llama.cpp (seconds per run; tokens/s from the median)."""

    path: str
    prefill_s: list[float]  # one prefill of ``prefill_len`` tokens per repeat
    decode_s: list[float]  # ``decode_tokens`` single-token steps per repeat, after ``decode_context`` tokens

    def summary(self, prefill_len: int, decode_tokens: int) -> dict:
        def rate(tokens: int, runs: list[float]) -> dict:
            per = sorted(tokens / s for s in runs)
            return {"median": statistics.median(per), "min": per[0], "max": per[-1]}

        return {"prefill_tokens_per_s": rate(prefill_len, self.prefill_s),
                "decode_tokens_per_s_b1": rate(decode_tokens, self.decode_s),
                "prefill_s": self.prefill_s, "decode_s": self.decode_s}


def decode_steps(llm, context: list[int], decode_tokens: int) -> list[float]:
    """Seconds of each of ``decode_tokens`` greedy steps after ``context`` (argmax is part of the step,
    as a chat front end decodes). Per step, so that a stall from another job stays one step's outlier."""
    llm.reset()
    llm.eval(context)
    out = []
    for _ in range(decode_tokens):
        t = time.perf_counter()
        llm.eval([int(np.argmax(last_logits(llm)))])
        out.append(time.perf_counter() - t)
    return out


def time_once(llm, prefill: list[int], context: list[int], decode_tokens: int) -> tuple[float, float]:
    """(seconds for one prefill of ``prefill``, seconds for ``decode_tokens`` greedy steps after ``context``)."""
    llm.reset()
    t = time.perf_counter()
    llm.eval(prefill)
    return time.perf_counter() - t, sum(decode_steps(llm, context, decode_tokens))


def time_ggufs(paths: Sequence["str | Path"], prefill_len: int = 512, decode_tokens: int = 32,
               decode_context: int = 64, repeats: int = 5, warmup: int = 1, threads: "int | None" = None,
               seed: int = 0) -> list[GgufSpeed]:
    """Prefill and batch-1 decode of each file, the files taking turns run by run so that load
    from other processes falls on all of them alike. Token ids are seeded random (speed does not
    depend on the text)."""
    n_ctx = max(prefill_len, decode_context + decode_tokens) + 1
    models = [open_gguf(p, n_ctx=n_ctx, threads=threads, logits_all=False) for p in paths]
    vocab = min(llm.n_vocab() for llm in models)
    prefill = np.random.default_rng(seed).integers(0, vocab, prefill_len).tolist()
    context = prefill[:decode_context]
    out = [GgufSpeed(str(p), [], []) for p in paths]
    for run in range(warmup + repeats):
        for llm, speed in zip(models, out):
            prefill_s, decode_s = time_once(llm, prefill, context, decode_tokens)
            if run >= warmup:
                speed.prefill_s.append(prefill_s)
                speed.decode_s.append(decode_s)
    return out
