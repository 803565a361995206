"""Next-token logits a few hundred positions at a time.

A model's forward makes its [batch, seq, vocabulary] logits at once: 2.1 GB for one 2048-token
window of Gemma 3's 262,144-token vocabulary in float32, and as much again for a log-softmax of
them. Here the forward stops at the head (a pre-hook takes the head's input) and the head runs
``HEAD_TOKENS`` positions at a time (``Adapter.logits``: the head, then any final soft-capping), so
perplexity and the searched plans' KL hold one chunk of logits at a time, whatever the vocabulary.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..models.adapters import Adapter, adapter_for

HEAD_TOKENS = 256  # positions per head product: 268 MB of float32 logits for a 262K vocabulary


class _HeadInput(Exception):
    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


def head_input(model, adapter: Adapter, ids: torch.Tensor) -> torch.Tensor:
    """What the model's head reads for ``ids`` ([batch, seq, width]): the forward runs up to the head
    and stops there."""
    def stop(_module, args):
        raise _HeadInput(args[0])

    handle = adapter.head(model).register_forward_pre_hook(stop)
    try:
        model(input_ids=ids, use_cache=False)
    except _HeadInput as found:
        return found.hidden
    finally:
        handle.remove()
    raise RuntimeError("the model's forward never reached its head")


def logit_chunks(model, ids: torch.Tensor, tokens: "int | None" = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, logits)`` over the positions of ``ids`` flattened to [batch·seq], ``tokens`` rows at a
    time (``HEAD_TOKENS`` by default); the logits are float32, ``len(rows)`` × vocabulary."""
    tokens = tokens or HEAD_TOKENS
    adapter = adapter_for(model)
    hidden = head_input(model, adapter, ids).flatten(0, 1)
    for start in range(0, hidden.shape[0], tokens):
        rows = slice(start, min(start + tokens, hidden.shape[0]))
        yield rows, adapter.logits(model, hidden[rows]).float()
