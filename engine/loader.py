"""``load_model``: any spec, a SlimLab result included.

The one place that knows both loaders, so ``engine.models`` (base checkpoints) and
``engine.compressed`` (SlimLab results, built on ``engine.models``) need not import each other.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .compressed import is_compressed, load_compressed
from .models import LoadedModel, check_local_spec, load_pretrained


def load_model(spec: str, device: str = "auto", dtype: "str | torch.dtype" = "auto", trust_remote_code: bool = False,
               log=print, stream: bool = False) -> LoadedModel:
    """Load ``demo``, a Hub id, a local folder, a ``.gguf`` file, or a folder written by SlimLab.

    ``stream`` (base safetensors folders only): layers stay on disk until a pass reads them."""
    path = Path(str(spec).strip()).expanduser()
    if is_compressed(path):
        return load_compressed(path, device=device, dtype=dtype, spec=str(spec))
    return load_pretrained(spec, device, dtype, trust_remote_code, log, stream)


def check_model_spec(spec: str) -> None:
    """``load_model``'s refusals of a spec that need no weights read (a missing path, a folder that
    is no checkpoint), so a command refuses a second model before it loads the first."""
    if not is_compressed(Path(str(spec).strip()).expanduser()):
        check_local_spec(spec)
