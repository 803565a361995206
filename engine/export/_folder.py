"""What the folder formats (``hf``, ``decilm``) share: the dtype to write, the files that travel
unchanged (tokenizer, chat template, generation config, slimlab.json) and safetensors writing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from ..models.streaming import INDEX
from .base import DTYPES

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
HALF = {"bfloat16": "bf16", "float16": "f16"}
WEIGHTS = ("model*.safetensors", INDEX)  # a result's weights (single file or shards); not its structure file
SHARD_BYTES = 2 * 2**30  # transformers' default shard size
# what a folder format's registration says unless it differs: any dtype, the original checkpoint's by default
FOLDER_FORMAT = dict(writes="folder", suffix="", dtypes=("auto",) + DTYPES, default_dtype="auto")


def original_dtype(meta: dict) -> str:
    """``bf16``/``f16`` when the checkpoint the result was compressed from stored its weights so,
    else ``f32`` (SlimLab computes in float32 on a CPU, so the result's own config says float32)."""
    spec = str(meta.get("recipe", {}).get("model") or "")
    config = _source_config(spec)
    stored = str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
    return HALF.get(stored, "f32")


def _source_config(spec: str) -> dict:
    from ..models.demo import demo_dir

    folder = demo_dir() if spec == "demo" else Path(spec)
    try:
        if folder.is_dir():
            return json.loads((folder / "config.json").read_text())
        from transformers import AutoConfig  # a Hub id already in the local cache

        return AutoConfig.from_pretrained(spec, local_files_only=True).to_dict()
    except Exception:  # noqa: BLE001 - unknown origin: keep float32
        return {}


def resolve_dtype(dtype: str, meta: dict) -> str:
    return original_dtype(meta) if dtype == "auto" else dtype


def copy_side_files(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    """Every file of the result except its weights (and ``skip``), as it is."""
    weights = {p.name for pattern in WEIGHTS for p in source.glob(pattern)}
    for path in source.iterdir():
        if path.is_file() and path.name not in weights and path.name not in skip:
            shutil.copyfile(path, target / path.name)


def save_weights(state: dict[str, torch.Tensor], folder: Path, dtype: str) -> int:
    """``state`` in ``dtype`` (floating tensors only) as ``model.safetensors``, or as shards with a
    transformers index above ``SHARD_BYTES``; returns the bytes written."""
    from safetensors.torch import save_file

    target = TORCH_DTYPES[dtype]
    cast = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = shard_size = 0
    for name, tensor in cast.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_size + nbytes > SHARD_BYTES:
            shards.append({})
            shard_size = 0
        shards[-1][name] = tensor
        size, shard_size = size + nbytes, shard_size + nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return size
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, str(folder / name), metadata={"format": "pt"})
    weight_map = {k: name for name, shard in zip(names, shards) for k in shard}
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2))
    return size


def set_config_dtype(folder: Path, dtype: str, extra: Optional[dict] = None, drop: tuple[str, ...] = ()) -> dict:
    """Say the written dtype in ``config.json`` (what ``dtype="auto"`` loaders read), with ``extra`` keys
    set and ``drop`` keys removed; returns the config."""
    path = folder / "config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if k not in drop} | (extra or {})
    config["dtype"] = str(TORCH_DTYPES[dtype]).replace("torch.", "")
    config.pop("torch_dtype", None)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return config
