"""Models whose layers stay on disk: read one decoder layer at a time, write one at a time.

A streamed ``LoadedModel`` holds only the parts outside the layers (embeddings, final norm,
head) in memory; its layers are meta tensors, and ``SafetensorsLayers.read`` materialises a
private copy of one layer from the checkpoint's safetensors files when the driver reaches
it. Compressed layers go the other way through ``write_layer``. So compressing a folder
needs about one layer of memory, not the model's size.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import CorruptWeightsError

INDEX = "model.safetensors.index.json"


def checkpoint_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (sharded or single-file checkpoints)."""
    index = folder / INDEX
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.exists():
        return {}
    return {name: single for name in tensor_names(single)}


def tensor_names(path: Path) -> list[str]:
    """The tensor names in one safetensors file (its header only is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def read_tensors(files: dict[str, Path], names: dict[str, str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``{module name: tensor}`` for ``names`` (module name -> checkpoint name), one file open at a time
    (each is memory-mapped only while it is read)."""
    from safetensors import SafetensorError, safe_open

    by_file: dict[Path, list[tuple[str, str]]] = {}
    for ours, theirs in names.items():
        by_file.setdefault(files[theirs], []).append((ours, theirs))
    out = {}
    for path, pairs in by_file.items():
        try:
            with safe_open(str(path), framework="pt") as f:
                for ours, theirs in pairs:
                    tensor = f.get_tensor(theirs)
                    out[ours] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        except (SafetensorError, OSError) as exc:
            raise CorruptWeightsError(f"The weights in '{path}' are corrupt or truncated ({exc}).") from exc
    return out


class SafetensorsLayers:
    """Reads decoder layer ``i`` of a checkpoint into a private module on the compute device."""

    def __init__(self, files: dict[str, Path], prefix: str, checkpoint_name, dtype: torch.dtype):
        self.files, self.prefix, self.dtype = files, prefix, dtype
        self._name = checkpoint_name  # our tensor name -> the checkpoint's

    def read(self, index: int, template: nn.Module, device: torch.device) -> nn.Module:
        layer = copy.deepcopy(template)  # meta: costs nothing
        names = {name: self._name(f"{self.prefix}.{index}.{name}") for name, _ in layer.state_dict().items()}
        missing = [theirs for theirs in names.values() if theirs not in self.files]
        if missing:
            raise CorruptWeightsError(f"The checkpoint lacks {missing[0]} (layer {index}); download it again.")
        layer.load_state_dict(read_tensors(self.files, names, self.dtype), strict=True, assign=True)
        return layer.to(device)


def write_layer(folder: Path, position: int, layer: nn.Module, prefix: str) -> Path:
    """Save one finished layer as ``layer-NNNNN.safetensors`` under the model's tensor names."""
    from safetensors.torch import save_file

    path = folder / f"layer-{position:05d}.safetensors"
    state = {f"{prefix}.{position}.{k}": v.detach().contiguous().cpu() for k, v in layer.state_dict().items()}
    save_file(state, str(path))
    return path


def layers_prefix(model: nn.Module, layers: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is layers)


def load_streamed(folder: Path, config, adapter, dtype: torch.dtype) -> Optional[tuple[nn.Module, SafetensorsLayers]]:
    """The model with only its outside parts loaded, and a reader for its layers; None when the
    folder has no safetensors weights (the caller loads it whole instead)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    files = checkpoint_files(folder)
    if not files:
        return None
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    prefix = layers_prefix(model, adapter.layers(model))
    base = getattr(model, "base_model_prefix", "")

    def checkpoint_name(name: str) -> str:
        """Some checkpoints store the base model without its prefix (e.g. ``decoder.…`` for OPT)."""
        if name not in files and base and name.startswith(base + ".") and name[len(base) + 1:] in files:
            return name[len(base) + 1:]
        return name

    outside = {name: checkpoint_name(name) for name in model.state_dict() if not name.startswith(prefix + ".")}
    present = {ours: theirs for ours, theirs in outside.items() if theirs in files}
    model.load_state_dict(read_tensors(files, present, dtype), strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    still_meta = [n for n, p in model.named_parameters() if p.is_meta and not n.startswith(prefix + ".")]
    if still_meta:
        raise CorruptWeightsError(f"The checkpoint in '{folder}' lacks {still_meta[0]}; download it again.")
    return model.eval(), SafetensorsLayers(files, prefix, checkpoint_name, dtype)
