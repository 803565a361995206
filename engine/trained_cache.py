"""Small networks a method trains (PruneNet's row policy, DISP-LLM's selection network), kept in the cache
so a run with the same inputs and settings reuses them instead of training again.

A network is stored as ``$SLIMLAB_CACHE/<method>/<key>.safetensors``: its weights, and JSON-encoded
metadata (its training curves). The key is a digest of everything that decides the training: the
settings and the tensors it learned from (weights, calibration tokens), so a changed model or setting
never reuses a stale network.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar

import torch
from torch import nn

from .atomic import atomic_file
from .cache import cache_root

M = TypeVar("M", bound=nn.Module)


def digest(settings: dict, tensors: Iterable[torch.Tensor]) -> str:
    """A short key from JSON-ready ``settings`` and the bytes of ``tensors``, in order."""
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def trained_path(method: str, key: str) -> Path:
    return cache_root() / method / f"{key}.safetensors"


def load_trained(method: str, key: str, build: Callable[[], M]) -> Optional[tuple[M, dict]]:
    """The network stored under ``key`` (``build()`` makes the empty one its weights fill) and its metadata;
    None, building nothing, when nothing is stored there."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = trained_path(method, key)
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    module = build()
    module.load_state_dict(load_file(str(path)))
    return module, meta


def save_trained(method: str, key: str, module: nn.Module, **meta) -> None:
    """Store ``module``'s weights and the JSON-ready ``meta`` under ``key`` (atomically)."""
    from safetensors.torch import save_file

    path = trained_path(method, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in meta.items()})
