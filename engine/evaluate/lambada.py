"""LAMBADA (OpenAI variant) accuracy from the data dir, as lm-eval's ``lambada_openai`` scores it.

An item is right when greedy decoding reproduces the whole last word (every one of its
tokens is the argmax given the text before it); the continuation is the context+word
encoding minus the context's, as lm-eval splits it. Also the perplexity of the last word
(exp of the mean negative log-likelihood per item), accumulated in float64.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..data.sources import read_records
from ..errors import DataError
from ..progress import as_reporter
from .tasks.local import data_root
from .zeroshot import subsample_indices
from ..memory import EVAL_OOM_ADVICE, out_of_memory_as_error

LAMBADA_FILE = "lambada/llmfoundry_lambada_openai.jsonl"
LAMBADA_ITEMS = 5153
STAGE = "lambada"


@dataclass
class LambadaResult:
    acc: float
    ppl: float
    n: int
    limit: Optional[int]
    seed: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def load_lambada(data_dir=None) -> list[dict]:
    path = data_root(data_dir) / LAMBADA_FILE
    if not path.is_file():
        raise DataError(f"LAMBADA needs {LAMBADA_FILE} in the data dir ({path} not found).")
    items = read_records(path)
    if len(items) != LAMBADA_ITEMS:
        raise DataError(f"{path} has {len(items)} items, not {LAMBADA_ITEMS}; re-copy it from shared/data.")
    return items


def _encode(tokenizer, item: dict) -> tuple[list[int], list[int]]:
    context = item["context"]
    whole = tokenizer(context + " " + item["continuation"], add_special_tokens=False)["input_ids"]
    n_ctx = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    return whole[:n_ctx], whole[n_ctx:]


@torch.inference_mode()
@out_of_memory_as_error("running LAMBADA", EVAL_OOM_ADVICE)
def lambada(model, tokenizer, limit: Optional[int] = None, data_dir=None, seed: int = 1234, batch_size: int = 16,
            progress=None) -> LambadaResult:
    """Accuracy and last-word perplexity on all items, or a seeded subset of ``limit``."""
    items = load_lambada(data_dir)
    picked = subsample_indices(len(items), limit, seed, "lambada")
    encoded = [_encode(tokenizer, items[i]) for i in (picked if picked is not None else range(len(items)))]
    order = sorted(range(len(encoded)), key=lambda i: -sum(map(len, encoded[i])))  # similar lengths batch together
    device = next(model.parameters()).device
    reporter = as_reporter(progress)
    right, nll, t0 = 0, 0.0, time.perf_counter()
    for start in range(0, len(order), batch_size):
        batch = [encoded[i] for i in order[start:start + batch_size]]
        width = max(len(c) + len(t) for c, t in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (c, t) in enumerate(batch):
            ids[row, : len(c) + len(t)] = torch.tensor(c + t)
            mask[row, : len(c) + len(t)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        for row, (c, t) in enumerate(batch):
            pred = logits[row, len(c) - 1 : len(c) + len(t) - 1].double()
            target = torch.tensor(t, device=pred.device)
            right += bool((pred.argmax(-1) == target).all())
            nll += float(F.cross_entropy(pred, target, reduction="sum"))
        reporter(STAGE, min(start + batch_size, len(order)), len(order), f"acc {right / min(start + batch_size, len(order)):.3f}")
    n = len(encoded)
    return LambadaResult(acc=right / n, ppl=math.exp(nll / n), n=n, limit=limit, seed=seed,
                         seconds=time.perf_counter() - t0)
