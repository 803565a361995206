"""Token windows: non-overlapping for evaluation, seeded random for calibration."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from .token_cache import cached_ids


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """The whole text as one 1-D token tensor (tokenized once, as the paper protocol does;
    kept on disk for the next run)."""
    return cached_ids(tokenizer, text, lambda: _encode(tokenizer, text))


def _encode(tokenizer, text: str) -> torch.Tensor:
    old = getattr(tokenizer, "model_max_length", None)
    try:
        tokenizer.model_max_length = int(1e30)  # silence the 'sequence too long' warning
        # a list, not return_tensors="pt": transformers' tensor conversion of ~300K ids takes 0.4 s
        ids = torch.tensor(tokenizer(text, return_attention_mask=False)["input_ids"], dtype=torch.long)
    finally:
        if old is not None:
            tokenizer.model_max_length = old
    return ids


def eval_windows(tokenizer, text: str, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """[n, seqlen] non-overlapping windows from the start of the text; the tail is dropped."""
    ids = tokenize(tokenizer, text)
    n = ids.numel() // seqlen
    if n == 0:
        raise DataError(f"The text has {ids.numel()} tokens, fewer than one window of {seqlen}.")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].view(n, seqlen)


def calibration_windows(tokenizer, text: str, nsamples: int, seqlen: int, seed: int = 42) -> torch.Tensor:
    """[nsamples, seqlen] windows at seeded random offsets (same seed, same batch)."""
    if nsamples <= 0 or seqlen <= 0:
        raise DataError(f"nsamples and seqlen must be positive (got {nsamples}, {seqlen}).")
    ids = tokenize(tokenizer, text)
    if ids.numel() < seqlen + 1:
        raise DataError(
            f"The calibration text has {ids.numel()} tokens, too short for windows of {seqlen}; "
            "use a longer source or a smaller --seqlen."
        )
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, ids.numel() - seqlen, size=nsamples)
    return torch.stack([ids[s : s + seqlen] for s in starts])
