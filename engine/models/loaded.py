"""A loaded model and the device/dtype rules every loader shares (no loader imports another)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import SlimLabError
from .adapters import Adapter

SLIMLAB_META = "slimlab.json"


@dataclass
class LoadedModel:
    """A model ready for inference, with what the rest of the engine needs to know about it."""

    model: nn.Module
    tokenizer: Any
    spec: str
    adapter: Adapter
    path: Optional[Path] = None  # local folder or file the weights came from
    meta: dict = field(default_factory=dict)  # slimlab.json of a compressed model
    layer_reader: Any = None  # streamed: the layers stay on disk (meta here) and are read one at a time
    compute: Optional[torch.device] = None  # where layer-by-layer work runs (default: the model's device)
    # a trimmed vocabulary's original tokenizer: ppl is measured per its tokens, comparable with the original's
    reference_tokenizer: Any = None

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def compute_device(self) -> torch.device:
        return self.compute or self.device

    @property
    def streamed(self) -> bool:
        """Layers on disk: fine for compressing, not for running the model."""
        return self.layer_reader is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SlimLabError("--device cuda was asked for, but no CUDA GPU is visible. Use --device auto or cpu.")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SlimLabError("--device mps was asked for, but MPS is not available. Use --device auto or cpu.")
    return torch.device(device)


_DTYPES = {"float64": torch.float64, "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: "str | torch.dtype", device: torch.device, config=None) -> torch.dtype:
    """``auto``: float32 on CPU (fast and exact there), the checkpoint's half dtype on a GPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cpu":
            return torch.float32
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        stored = _DTYPES.get(str(stored).replace("torch.", ""), None) if stored is not None else None
        if stored in (torch.float16, torch.bfloat16):
            return stored
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    check_dtype(dtype)
    return _DTYPES[dtype]


def check_dtype(dtype: "str | torch.dtype") -> None:
    """Refuse a dtype name no loader knows, before anything is loaded."""
    if not isinstance(dtype, torch.dtype) and dtype != "auto" and dtype not in _DTYPES:
        raise SlimLabError(f"Unknown dtype '{dtype}'. Use auto, float32, float16, bfloat16 (or float64 for checks).")


