"""Token ids of a whole text, kept on disk between runs.

Tokenizing WikiText-2 takes 1-3 s on a CPU, and every compression and every perplexity run
does it again for the same ids. The key is a hash of the text and of the tokenizer's full
serialization (vocabulary, merges, normalizer, special-token post-processing), so a changed
tokenizer or text never reads stale ids. Slow (Python) tokenizers have no serialization to
hash and are not cached. A cache file that cannot be read is ignored and rewritten; one
that cannot be written costs nothing but the time.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Optional

import torch

from ..cache import cache_root


def cache_key(tokenizer, text: str) -> Optional[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    digest.update(backend.to_str().encode())
    digest.update(b"\0")
    digest.update(text.encode())
    return digest.hexdigest()[:32]


def cached_ids(tokenizer, text: str, encode: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``encode()``'s 1-D id tensor, from the cache when this tokenizer already encoded ``text``."""
    key = cache_key(tokenizer, text)
    if key is None:
        return encode()
    path = cache_root() / "tokens" / f"{key}.pt"
    try:
        ids = torch.load(path, weights_only=True)
        if isinstance(ids, torch.Tensor) and ids.dim() == 1 and ids.dtype == torch.long and ids.numel() > 0:
            return ids
    except Exception:  # noqa: BLE001 - missing, truncated or foreign file: encode again
        pass
    ids = encode()
    _write_atomically(path, ids)
    return ids


def _write_atomically(path: Path, ids: torch.Tensor) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ids, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
