"""Perplexity, paper protocol: the raw test split joined by blank lines, tokenized once,
cut into non-overlapping windows, mean NLL over every predicted token.

A model whose vocabulary was trimmed reads the same text in more tokens (a rare word splits into
pieces), so its ppl per own token is not comparable with the original's. Given the original
(``reference_tokenizer``), the windows are the original's, each is decoded and re-encoded by the
trimmed tokenizer, and the NLL of the same text is divided by the ORIGINAL token count."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F

from ..data import eval_windows, load_text
from .logits import logit_chunks
from ..progress import Reporter, as_reporter
from ..memory import EVAL_OOM_ADVICE, out_of_memory_as_error
from ..errors import ConfigError


@dataclass
class PerplexityResult:
    ppl: float
    nll: float
    windows: int
    tokens: int  # predicted tokens
    seqlen: int
    dataset: str
    seconds: float
    tokens_per_s: float
    protocol: str = "paper: raw split joined by '\\n\\n', tokenized once, non-overlapping windows"
    # the windows are a reference (original) tokenizer's, re-encoded by the model's trimmed one; ``tokens``
    # counts the original's predicted tokens, ``model_tokens`` what the model read
    per_reference_token: bool = False
    model_tokens: Optional[int] = None
    note: str = ""  # what a report must say beside the number (a trimmed model measured per its own tokens)

    def to_dict(self) -> dict:
        return asdict(self)


def ppl_units(result: dict) -> str:
    """What a ppl (``PerplexityResult.to_dict()``) is per when not simply the model's own tokens, for a report
    to print beside it (so a trimmed model's number is read for what it is); "" otherwise."""
    if result.get("per_reference_token"):
        ratio = result["model_tokens"] / (result["windows"] * result["seqlen"])
        return f"per original token (trimmed vocabulary: the same text re-encoded, {ratio:.3f}x the tokens)"
    return result.get("note") or ""


NONSENSE_RATIO = 2.0  # compressed ppl / original ppl above which the model is flagged
NONSENSE_WARNING = ("This model is likely to produce nonsense; try a smaller ratio, a chat calibration or "
                    "recovery.")


def nonsense_warning(original_ppl: "float | None", compressed_ppl: "float | None") -> "str | None":
    """The warning a front end shows when the compressed ppl is more than ``NONSENSE_RATIO`` times
    the original's (both measured the same way), else None; None too when either is missing.
    (On the demo model, FASP 20% with an 8×128 wikitext calibration, at 6-7× the dense ppl,
    answered simple chat questions with gibberish: issue 12.)"""
    if original_ppl is None or compressed_ppl is None or not math.isfinite(original_ppl) or original_ppl <= 0:
        return None
    ratio = compressed_ppl / original_ppl
    if ratio <= NONSENSE_RATIO:  # a NaN ppl fails this test too, and is warned about
        return None
    return f"{NONSENSE_WARNING} (ppl {compressed_ppl:,.1f} vs {original_ppl:,.1f} for the original, {ratio:,.1f}×)"


IGNORED = -100  # cross_entropy's ignore_index


def _chunk_nlls(model, batch: torch.Tensor, float64: bool = False) -> Iterator[float]:
    """Summed NLL of each chunk of positions' next tokens in ``batch`` (a window's last position predicts
    nothing); the caller adds them up, chunk by chunk, into its float total."""
    targets = torch.cat([batch[:, 1:], batch.new_full((batch.shape[0], 1), IGNORED)], 1).flatten()
    for rows, logits in logit_chunks(model, batch):
        yield F.cross_entropy(logits.double() if float64 else logits, targets[rows], ignore_index=IGNORED,
                              reduction="sum").item()


@torch.inference_mode()
def window_nll(model, windows: torch.Tensor, batch_size: int = 1, progress: "Reporter | None" = None) -> tuple[float, int]:
    """Summed NLL and predicted-token count over windows (each predicts seqlen-1 tokens); the logits
    are made a chunk of positions at a time (``logit_chunks``)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    reporter = as_reporter(progress)
    n = windows.shape[0]
    for start in range(0, n, batch_size):
        batch = windows[start : start + batch_size].to(device)
        for nll in _chunk_nlls(model, batch):
            total += nll
        count += batch[:, 1:].numel()
        reporter("perplexity", min(start + batch_size, n), n, f"ppl {math.exp(total / count):.2f}")
    return total, count


@dataclass
class TextNLL:
    """The NLL of windows' text under another tokenizer than the one that cut them."""

    nll: float  # summed, float64
    predicted: int  # the windows' predicted tokens (the reference's count: what ppl divides by)
    model_tokens: int  # the tokens the model read (its tokenizer's count of the same text)
    mismatched: int  # windows whose text re-encodes to other ids than the window's


def _encode(tokenizer, text: str) -> list[int]:
    """``text``'s ids without special tokens, whatever its length (the context is checked by the caller,
    so the tokenizer's 'sequence too long' warning is silenced)."""
    old = tokenizer.model_max_length
    try:
        tokenizer.model_max_length = int(1e30)
        return tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    finally:
        tokenizer.model_max_length = old


@torch.inference_mode()
def text_nll(model, tokenizer, reference_tokenizer, windows: torch.Tensor, progress: "Reporter | None" = None
             ) -> TextNLL:
    """The NLL of ``model`` on each window of ``reference_tokenizer`` ids, decoded to text and encoded by
    ``tokenizer``, one window at a time (they differ in length), in float64. A re-encoded window longer
    than the model's context is refused: positions past it would be measured, not the text."""
    device = next(model.parameters()).device
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    reporter = as_reporter(progress)
    predicted = windows.shape[0] * (windows.shape[1] - 1)
    total, model_tokens, mismatched = 0.0, 0, 0
    for w, window in enumerate(windows.tolist()):
        text = reference_tokenizer.decode(window, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        ids = _encode(tokenizer, text)
        if context is not None and len(ids) > context:
            raise ConfigError(f"Window {w} of {len(window):,} original tokens is {len(ids):,} tokens under the "
                              f"trimmed tokenizer, more than the model's context ({context:,} positions): use a "
                              "smaller seqlen.")
        mismatched += ids != window
        for nll in _chunk_nlls(model, torch.tensor([ids], dtype=torch.long, device=device), float64=True):
            total += nll
        model_tokens += len(ids)
        done = (w + 1) * (windows.shape[1] - 1)
        reporter("perplexity", w + 1, windows.shape[0], f"ppl {math.exp(total / done):.2f} per original token")
    return TextNLL(total, predicted, model_tokens, mismatched)


@out_of_memory_as_error("computing perplexity", EVAL_OOM_ADVICE)
def perplexity(
    model,
    tokenizer,
    dataset: str = "wikitext2",
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    data_dir: str | None = None,
    progress=None,
    reference_tokenizer: Optional[Any] = None,
) -> PerplexityResult:
    """Perplexity of ``dataset``'s first ``max_windows`` windows of ``seqlen`` tokens. With a
    ``reference_tokenizer`` (a trimmed model's original) other than ``tokenizer``, the windows and the token
    count are the reference's and the model reads the same text re-encoded (``text_nll``; ``batch_size`` is
    then 1): the ppl is per original token, comparable with the original model's."""
    text = load_text(dataset, data_dir)
    reference = None if reference_tokenizer is tokenizer else reference_tokenizer
    windows = eval_windows(tokenizer if reference is None else reference, text, seqlen, max_windows)
    t0 = time.perf_counter()
    if reference is None:
        nll, count = window_nll(model, windows, batch_size, as_reporter(progress))
        read = windows.numel()
    else:
        measured = text_nll(model, tokenizer, reference, windows, as_reporter(progress))
        nll, count, read = measured.nll, measured.predicted, measured.model_tokens
    seconds = time.perf_counter() - t0
    return PerplexityResult(
        ppl=math.exp(nll / count), nll=nll / count, windows=windows.shape[0], tokens=count, seqlen=seqlen,
        dataset=dataset, seconds=seconds, tokens_per_s=read / seconds, per_reference_token=reference is not None,
        model_tokens=None if reference is None else read,
    )
