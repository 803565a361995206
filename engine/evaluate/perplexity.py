"""Perplexity, paper protocol: the raw test split joined by blank lines, tokenized once,
cut into non-overlapping windows, mean NLL over every predicted token."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..data import eval_windows, load_text
from ..progress import Reporter, as_reporter


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


@torch.inference_mode()
def window_nll(model, windows: torch.Tensor, batch_size: int = 1, progress: "Reporter | None" = None) -> tuple[float, int]:
    """Summed NLL and predicted-token count over windows (each predicts seqlen-1 tokens)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    reporter = as_reporter(progress)
    n = windows.shape[0]
    for start in range(0, n, batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += batch[:, 1:].numel()
        reporter("perplexity", min(start + batch_size, n), n, f"ppl {math.exp(total / count):.2f}")
    return total, count


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
