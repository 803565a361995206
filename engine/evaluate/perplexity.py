"""Perplexity, paper protocol: the raw test split joined by blank lines, tokenized once,
cut into non-overlapping windows, mean NLL over every predicted token."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..data import eval_windows, load_text
from .logits import logit_chunks
from ..progress import Reporter, as_reporter
from ..memory import EVAL_OOM_ADVICE, out_of_memory_as_error


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

    def to_dict(self) -> dict:
        return asdict(self)


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
        # each position predicts the next token; a window's last position predicts nothing (ignored)
        targets = torch.cat([batch[:, 1:], batch.new_full((batch.shape[0], 1), IGNORED)], 1).flatten()
        for rows, logits in logit_chunks(model, batch):
            total += F.cross_entropy(logits, targets[rows], ignore_index=IGNORED, reduction="sum").item()
        count += batch[:, 1:].numel()
        reporter("perplexity", min(start + batch_size, n), n, f"ppl {math.exp(total / count):.2f}")
    return total, count


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
) -> PerplexityResult:
    text = load_text(dataset, data_dir)
    windows = eval_windows(tokenizer, text, seqlen, max_windows)
    t0 = time.perf_counter()
    nll, count = window_nll(model, windows, batch_size, as_reporter(progress))
    seconds = time.perf_counter() - t0
    return PerplexityResult(
        ppl=math.exp(nll / count), nll=nll / count, windows=windows.shape[0], tokens=count, seqlen=seqlen,
        dataset=dataset, seconds=seconds, tokens_per_s=windows.numel() / seconds,
    )
