"""Generation speed and memory: prefill tokens/s, decode tokens/s per batch size, time to
first token, peak memory.

Timed with a plain greedy loop over the KV cache rather than ``generate()``, so that stop
tokens, sampling and logits processors cannot make two models do different work: every run
decodes exactly ``decode_tokens`` steps. Inputs are seeded random token ids (speed does not
depend on the text). Each figure is the median over ``repeats`` runs after ``warmup`` runs,
because other processes share the machine. Peak memory is the process's peak RSS on CPU
(interpreter, libraries and every model in memory included) and max allocated on CUDA
(engine/memory.py). Because the first of those counts whatever else the process holds, the
figure to compare between models is ``model_memory_mb``: the model's weights plus the peak
growth during the runs (activations, KV cache) over the level right after the peak reset.
On CPU that growth is approximate (the allocator may reuse memory freed by earlier work).
Time to first token is the batch-1 prefill of ``prefill_len`` tokens plus picking the token.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from ..errors import ConfigError
from ..memory import EVAL_OOM_ADVICE, out_of_memory_as_error, peak_mb, reset_peak
from ..progress import CancelToken, Reporter, as_reporter

STAGE = "speed"


@dataclass
class SpeedResult:
    prefill_tokens_per_s: float
    decode_tokens_per_s: dict[int, float]  # batch size -> generated tokens/s (all sequences)
    ttft_ms: float
    peak_memory_mb: float  # RSS peak of the process (CPU) / max allocated (CUDA), as measured
    model_memory_mb: float  # weights + what the runs added on top: comparable between models in one process
    weights_mb: float
    device: str
    dtype: str
    threads: int  # torch CPU threads: oversubscribed threads on a busy machine stall small ops badly
    prefill_len: int
    decode_tokens: int
    decode_context: int
    repeats: int
    warmup: int
    timings_s: dict[str, list[float]]  # raw timed runs, e.g. {"prefill": [...], "decode_b16": [...]}
    memory_kind: str = ""
    protocol: str = ("median of repeats after warm-up; greedy decode over the KV cache, fixed step count; "
                     "seeded random token ids")

    def spread(self) -> dict[str, list[float]]:
        """Each timed figure's [lowest, highest] over the repeats (the headline is their median), so a front
        end can tell a difference from run-to-run noise."""
        prefill = self.timings_s["prefill"]
        out = {"prefill_tokens_per_s": [self.prefill_len / max(prefill), self.prefill_len / min(prefill)],
               "ttft_ms": [1000 * min(prefill), 1000 * max(prefill)]}
        for b in self.decode_tokens_per_s:
            runs = self.timings_s[f"decode_b{b}"]
            out[f"decode_tokens_per_s_b{b}"] = [b * self.decode_tokens / max(runs), b * self.decode_tokens / min(runs)]
        return out

    def to_dict(self) -> dict:
        """Flat keys (``decode_tokens_per_s_b1`` ...) so the CLI, the UI and reports read the same names."""
        out = asdict(self)
        out.pop("decode_tokens_per_s")
        for b, tps in self.decode_tokens_per_s.items():
            out[f"decode_tokens_per_s_b{b}"] = tps
        out["batch_sizes"] = list(self.decode_tokens_per_s)
        out["spread"] = self.spread()
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], object]) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def prefill(model, ids: torch.Tensor):
    """One forward over the prompt that fills the cache and picks the first new token; like
    ``generate()``, the head runs on the last position only."""
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return out.past_key_values, out.logits[:, -1].argmax(-1)


def greedy_decode(model, cache, token: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` greedy steps over the cache after ``token``; returns [batch, steps] new tokens."""
    new = []
    for _ in range(steps):
        out = model(input_ids=token[:, None], past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1].argmax(-1)
        new.append(token)
    return torch.stack(new, dim=1)


def _weights_mb(model) -> float:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}  # tied weights once
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def _vocab(model, tokenizer) -> int:
    vocab = model.config.vocab_size
    return min(vocab, len(tokenizer)) if tokenizer is not None else vocab


@torch.inference_mode()
@out_of_memory_as_error("measuring speed", EVAL_OOM_ADVICE)
def measure_speed(
    model,
    tokenizer,
    prefill_len: int = 512,
    decode_tokens: int = 32,
    batch_sizes: tuple[int, ...] = (1, 16),
    repeats: int = 3,
    warmup: int = 1,
    progress=None,
    cancel: Optional[CancelToken] = None,
    decode_context: int = 64,
    seed: int = 0,
) -> dict:
    """Speed and memory of one model; returns ``SpeedResult.to_dict()``.

    Decode runs start from a ``decode_context``-token prompt (short, so batch 16 stays cheap
    on CPU); its prefill is not part of the decode time.
    """
    if repeats < 1 or warmup < 0 or prefill_len < 1 or decode_tokens < 1 or not batch_sizes:
        raise ConfigError("measure_speed needs repeats >= 1, warmup >= 0, prefill_len >= 1, decode_tokens >= 1 "
                          "and at least one batch size.")
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and max(prefill_len, decode_context + decode_tokens + 1) > max_pos:
        raise ConfigError(f"The model takes at most {max_pos} positions; lower prefill_len ({prefill_len}) "
                          f"or decode_context + decode_tokens ({decode_context} + {decode_tokens}).")
    reporter = as_reporter(progress)
    if cancel is not None:
        reporter = Reporter(callback=reporter.callback, cancel=cancel)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    vocab = _vocab(model, tokenizer)

    def ids(batch: int, length: int) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, length), generator=gen).to(device)

    total = (1 + len(batch_sizes)) * (warmup + repeats)
    step = 0

    def runs(label: str, measure: Callable[[], float]) -> list[float]:
        nonlocal step
        times = []
        for i in range(warmup + repeats):
            t = measure()
            if i >= warmup:
                times.append(t)
            step += 1
            reporter(STAGE, step, total, label)
        return times

    reset_peak(device)
    baseline = peak_mb(device)  # right after a reset, the peak is the current level
    prompt = ids(1, prefill_len)
    timings = {"prefill": runs(f"prefill {prefill_len}", lambda: _timed(device, lambda: prefill(model, prompt)))}
    decode_tps: dict[int, float] = {}
    for b in batch_sizes:
        def decode_once(b: int = b) -> float:
            cache, token = prefill(model, ids(b, decode_context))
            return _timed(device, lambda: greedy_decode(model, cache, token, decode_tokens))

        timings[f"decode_b{b}"] = runs(f"decode batch {b}", decode_once)
        decode_tps[b] = b * decode_tokens / statistics.median(timings[f"decode_b{b}"])
    prefill_s = statistics.median(timings["prefill"])
    peak, weights = peak_mb(device), _weights_mb(model)
    return SpeedResult(
        prefill_tokens_per_s=prefill_len / prefill_s, decode_tokens_per_s=decode_tps, ttft_ms=1000 * prefill_s,
        peak_memory_mb=peak, model_memory_mb=weights + max(peak - baseline, 0.0), weights_mb=weights,
        device=str(device), threads=torch.get_num_threads(),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""), prefill_len=prefill_len,
        decode_tokens=decode_tokens, decode_context=decode_context, repeats=repeats, warmup=warmup,
        timings_s=timings,
        memory_kind="max allocated (CUDA)" if device.type == "cuda" else "peak RSS of the whole process",
    ).to_dict()
