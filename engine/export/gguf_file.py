"""GGUF for llama.cpp, written with the ``gguf`` package (no llama.cpp checkout or converter).

The plain ``llama`` architecture when every layer has the same shapes (ShortGPT, uniform
FASP/Wanda-SP); llama.cpp's ``deci`` architecture (Nemotron-NAS: per-layer ``n_ff``,
``n_head``, ``n_head_kv``) when they differ. ``llama_layout`` says how the weights are laid
out and why that is exact; this module writes the file: hyperparameters, tokenizer and chat
template, tensors in the chosen dtype (norms stay f32, as llama.cpp's converter keeps 1-D tensors).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import gguf
import torch

from ..compressed import load_compressed
from ..models.loaded import LoadedModel
from .base import ExportFormat, ExportJob, ExportReport, register_format
from .gguf_vocab import add_vocab
from .llama_layout import Layout, layout, not_expressible

QUANT = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "bf16": gguf.GGMLQuantizationType.BF16}
FILE_TYPE = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}


def check(meta: dict) -> None:
    """Refuse, before loading, what no llama/deci GGUF can hold."""
    if meta.get("compensation"):
        raise not_expressible("low-rank side branches (compensation)")
    if meta.get("method") == "slicegpt" and meta.get("structure", {}).get("variant") != "shared":
        raise not_expressible("SliceGPT per-layer (a residual width per layer, shortcut matrices)")
    config = meta.get("config", {})
    if config.get("model_type") != "llama":
        raise not_expressible(f"the '{config.get('model_type')}' architecture with this exporter (llama only)")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise not_expressible(f"RoPE scaling '{rope['rope_type']}' with this exporter")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise not_expressible("linear biases in a llama model with this exporter")


def _per_layer(values: Sequence[int]) -> "int | list[int]":
    """One number when every layer agrees (what the plain llama arch reads), else the list."""
    return values[0] if len(set(values)) == 1 else list(values)


def _add_tensor(writer: gguf.GGUFWriter, name: str, tensor: torch.Tensor, dtype: str) -> None:
    data = tensor.detach().to(torch.float32).contiguous().numpy()
    qtype = QUANT[dtype] if data.ndim > 1 else gguf.GGMLQuantizationType.F32
    writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)  # bf16 arrives as bytes


def _add_hparams(writer: gguf.GGUFWriter, config, shapes: Layout, dtype: str) -> None:
    blocks = shapes.blocks
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(shapes.hidden)
    writer.add_block_count(len(blocks))
    writer.add_feed_forward_length(_per_layer([b.n_ff for b in blocks]))
    writer.add_head_count(_per_layer([b.n_head for b in blocks]))
    writer.add_head_count_kv(_per_layer([b.n_kv for b in blocks]))
    writer.add_key_length(shapes.head_dim)
    writer.add_value_length(shapes.head_dim)
    writer.add_rope_dimension_count(shapes.head_dim)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(shapes.eps)
    writer.add_vocab_size(shapes.embedding.shape[0])
    writer.add_file_type(FILE_TYPE[dtype])


def _add_tensors(writer: gguf.GGUFWriter, shapes: Layout, dtype: str) -> None:
    names = gguf.TENSOR_NAMES
    _add_tensor(writer, names[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight", shapes.embedding, dtype)
    _add_tensor(writer, names[gguf.MODEL_TENSOR.OUTPUT_NORM] + ".weight", shapes.final_norm, dtype)
    if shapes.head is not None:
        _add_tensor(writer, names[gguf.MODEL_TENSOR.OUTPUT] + ".weight", shapes.head, dtype)
    for i, block in enumerate(shapes.blocks):
        for role, tensor in block.tensors.items():
            _add_tensor(writer, f"blk.{i}.{role}.weight", tensor, dtype)


def write_gguf(path: Path, lm: LoadedModel, tokenizer_dir: Path, dtype: str, name: str,
               method: Optional[str] = None) -> tuple[str, Layout, list[str]]:
    """Write ``lm`` (a SlimLab result, or the dense model it came from, for comparisons) as GGUF.

    ``tokenizer_dir`` holds the saved tokenizer files (tokenizer.json, chat template).
    Returns (architecture, layout, notes for the user)."""
    shapes = layout(lm)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA if shapes.uniform else gguf.MODEL_ARCH.DECI]
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name)
    if method:
        writer.add_string("slimlab.method", method)
    _add_hparams(writer, lm.model.config, shapes, dtype)
    notes = add_vocab(writer, tokenizer_dir, lm.tokenizer, shapes.embedding.shape[0])
    _add_tensors(writer, shapes, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if shapes.padded:
        size = shapes.padded * (4 if dtype == "f32" else 2)
        notes.append(f"pruned value dims are zero-padded back to the full head width (exact): "
                     f"{shapes.padded:,} zeros, {size / 1e6:.2f} MB on disk")
    if shapes.folded_mix:
        notes.append(f"the final norm's mix is folded into an untied output matrix: +{shapes.head.numel():,} "
                     "weights on disk (llama.cpp has no matrix between the final norm and a tied head)")
    if shapes.stand_ins:
        notes.append(f"layers {shapes.stand_ins} have no MLP; each has a zero width-1 MLP (deci's n_ff = 0 would "
                     "skip the attention too)")
    return arch, shapes, notes


def write(job: ExportJob) -> ExportReport:
    job.log(f"loading {job.source}")
    lm = load_compressed(job.source, device="cpu", dtype="float32")
    job.log(f"writing GGUF ({job.dtype})")
    arch, shapes, notes = write_gguf(job.target, lm, job.source, job.dtype, job.source.name, job.meta.get("method"))
    return ExportReport(format="gguf", architecture=arch, notes=notes,
                        details={"blocks": len(shapes.blocks), "padded_zeros": shapes.padded,
                                 "n_ff": [b.n_ff for b in shapes.blocks],
                                 "n_head_kv": [b.n_kv for b in shapes.blocks]})


GGUF = register_format(ExportFormat(
    name="gguf",
    label="GGUF (llama.cpp)",
    expresses="llama-family results of ShortGPT, FASP and Wanda-SP (any plan; per-layer widths use the deci "
              "architecture) and SliceGPT variant=shared",
    writes="file",
    suffix=".gguf",
    check=check,
    write=write,
))
