"""GGUF for llama.cpp, written with the ``gguf`` package (no llama.cpp checkout or converter).

The plain ``llama`` architecture when every layer has the same shapes (ShortGPT, uniform
FASP/Wanda-SP); llama.cpp's ``deci`` architecture (Nemotron-NAS: per-layer ``n_ff``,
``n_head``, ``n_head_kv``) when they differ. ``llama_layout`` says how the weights are laid
out and why that is exact; this module writes the file: hyperparameters, tokenizer and chat
template, tensors in the chosen dtype (norms stay f32, as llama.cpp's converter keeps 1-D tensors).

Quantized files (``q8_0``, ``q4_0``, ``q4_1``: the block formats ``gguf`` can write in numpy) are
what people deploy; a matrix whose rows are not a whole number of 32-value blocks (a pruned width
such as 1229) stays f16 instead, and in 4-bit files the token embedding and head stay q8_0, as
llama.cpp's own quantizer keeps the output matrix at higher precision. The notes say which.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import gguf
import torch

from ..compressed import load_compressed
from ..models.loaded import LoadedModel
from .base import DTYPES, ROTATED_RESIDUAL, ExportFormat, ExportJob, ExportReport, extra_structure, register_format
from .gguf_vocab import add_vocab
from .llama_layout import Layout, layout, not_expressible

_Q = gguf.GGMLQuantizationType
QUANT = {"f32": _Q.F32, "f16": _Q.F16, "bf16": _Q.BF16, "q8_0": _Q.Q8_0, "q4_0": _Q.Q4_0, "q4_1": _Q.Q4_1}
FILE_TYPE = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}
BLOCK_DTYPES = ("q8_0", "q4_0", "q4_1")
_VOCAB_MATRICES = ("token_embd.weight", "output.weight")


def check(meta: dict) -> None:
    """Refuse, before loading, what no llama/deci GGUF can hold."""
    if (what := extra_structure(meta)) is not None:
        raise not_expressible(what)
    rotated = ROTATED_RESIDUAL.get(meta.get("method"))
    if rotated and meta.get("structure", {}).get("variant") != "shared":
        raise not_expressible(f"{rotated} per-layer (a residual width per layer, shortcut matrices)")
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


def tensor_type(name: str, shape: Sequence[int], dtype: str) -> gguf.GGMLQuantizationType:
    """The type one tensor is stored in: f32 for vectors, and for block formats f16 where a row is
    not a whole number of blocks, q8_0 for the vocabulary matrices of a 4-bit file."""
    if len(shape) < 2:
        return _Q.F32
    if dtype in BLOCK_DTYPES:
        if shape[-1] % gguf.GGML_QUANT_SIZES[QUANT[dtype]][0]:
            return _Q.F16
        if name in _VOCAB_MATRICES and dtype != "q8_0":
            return _Q.Q8_0
    return QUANT[dtype]


def _add_tensor(writer: gguf.GGUFWriter, name: str, tensor: torch.Tensor, dtype: str,
                fallbacks: list[str]) -> None:
    data = tensor.detach().to(torch.float32).contiguous().numpy()
    qtype = tensor_type(name, data.shape, dtype)
    if qtype == _Q.F16 and dtype in BLOCK_DTYPES:
        fallbacks.append(name)
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


def _add_tensors(writer: gguf.GGUFWriter, shapes: Layout, dtype: str) -> list[str]:
    """Add every tensor; returns the block-format tensors that had to stay f16."""
    names, fallbacks = gguf.TENSOR_NAMES, []
    _add_tensor(writer, names[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight", shapes.embedding, dtype, fallbacks)
    _add_tensor(writer, names[gguf.MODEL_TENSOR.OUTPUT_NORM] + ".weight", shapes.final_norm, dtype, fallbacks)
    if shapes.head is not None:
        _add_tensor(writer, names[gguf.MODEL_TENSOR.OUTPUT] + ".weight", shapes.head, dtype, fallbacks)
    for i, block in enumerate(shapes.blocks):
        for role, tensor in block.tensors.items():
            _add_tensor(writer, f"blk.{i}.{role}.weight", tensor, dtype, fallbacks)
    return fallbacks


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
    fallbacks = _add_tensors(writer, shapes, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if fallbacks:
        notes.append(f"{len(fallbacks)} matrices have rows that are not a whole number of {dtype} blocks and "
                     f"stay f16 (e.g. {fallbacks[0]}); widths in multiples of 32 quantize fully")
    if shapes.padded:
        block, block_bytes = gguf.GGML_QUANT_SIZES[QUANT[dtype]]
        size = shapes.padded * block_bytes / block
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
              "architecture) and SliceGPT or DOTResize variant=shared",
    writes="file",
    suffix=".gguf",
    dtypes=DTYPES + BLOCK_DTYPES,
    run="llama-cli -m {path}",
    check=check,
    write=write,
))
