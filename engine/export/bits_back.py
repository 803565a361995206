"""``slimlab export DIR --format bits-back``: a rotated result (SliceGPT, DOTResize) as a SlimLab folder
whose weights are one ``model.bitsback`` file, bit-exact and smaller than safetensors at the same dtype.

The codec and why it keeps the exact rotation instead of coding bits back: ``engine.compressed.bitsback``.
The folder keeps config.json, tokenizer and slimlab.json, so ``load_model`` (and every command that
takes a result) reads it; transformers alone cannot (no safetensors), so no remote code is written.
"""
from __future__ import annotations

from ..compressed.bitsback import WEIGHTS_FILE, require_coder, write_bitsback
from ..compressed.format import read_state
from ..compressed.remote_code import MODELING_FILE
from ._folder import FOLDER_FORMAT, TORCH_DTYPES, copy_side_files, resolve_dtype, set_config_dtype
from .base import ROTATED_RESIDUAL, ExportFormat, ExportJob, ExportReport, NotExpressible, register_format


def check(meta: dict) -> None:
    """Only results whose residual stream was rotated carry the per-direction structure this codes."""
    method = meta.get("method")
    if method not in ROTATED_RESIDUAL:
        raise NotExpressible(f"bits-back stores rotated results only ({', '.join(ROTATED_RESIDUAL.values())}); "
                             f"'{method}' does not rotate the residual stream, so there is no rotation to exploit: "
                             "use --format hf.")
    require_coder()


def rotation_params(structure: dict) -> int:
    """Degrees of freedom of the rotations a rotated result is defined up to (n(n-1)/2 per residual
    point): what a true bits-back coder could reclaim (He et al., 2024), at one weight's bits each.
    Per-layer bases: each layer's input and middle point, and the head's; shared: one basis."""
    widths = [int(w) for w in structure.get("widths", [])]
    if structure.get("variant") == "shared":
        points = widths[:1]
    else:
        points = [w for w in widths for _ in range(2)] + [int(structure.get("head_width", 0))]
    return sum(d * (d - 1) // 2 for d in points)


def write_bits_back(job: ExportJob) -> ExportReport:
    dtype = resolve_dtype(job.dtype, job.meta)
    copy_side_files(job.source, job.target, skip=(MODELING_FILE,))
    target = TORCH_DTYPES[dtype]
    state = {k: (v.to(target) if v.is_floating_point() else v) for k, v in read_state(job.source).items()}
    job.log(f"coding {len(state)} tensors in {dtype}")
    summary = write_bitsback(state, job.target / WEIGHTS_FILE)
    set_config_dtype(job.target, dtype, drop=("auto_map",))
    params = sum(t.numel() for t in state.values() if t.is_floating_point())
    saved = 1 - summary.file_bytes / summary.tensor_bytes
    rotations = rotation_params(job.meta.get("structure", {}))
    direction = summary.direction_bits / 8
    notes = [f"weights in {dtype}, bit-exact: {summary.file_bytes / 1e6:.2f} MB against {summary.tensor_bytes / 1e6:.2f} "
             f"MB of safetensors tensor data ({100 * saved:.1f}% smaller)",
             f"exponents coded at {summary.exponent_coded_bits / max(params, 1):.2f} bits per weight "
             f"(stored: {summary.exponent_bits / max(params, 1):.0f}); sign and mantissa bits as they are",
             f"recentring exponents per residual direction (row or column) paid in {summary.by_direction} of "
             f"{summary.coded} tensors: about {direction / 1e6:.3f} MB, {100 * direction / summary.tensor_bytes:.2f}% "
             "of the tensor bytes",
             f"the rotations' freedom is {100 * rotations / max(params, 1):.1f}% of the parameters: what true bits-back "
             "coding would reclaim by changing the weights to an equivalent rotation; this format keeps the exact "
             "weights, so it reclaims none of that",
             "loads with SlimLab (load_model, the Model tab, every command that takes a result)"]
    return ExportReport(format="bits-back", dtype=dtype, notes=notes,
                        architecture=str(job.meta.get("config", {}).get("model_type", "")),
                        details={"dtype": dtype, "safetensors_tensor_bytes": summary.tensor_bytes,
                                 "file_bytes": summary.file_bytes, "saved_percent": round(100 * saved, 2),
                                 "direction_saved_bytes": round(direction),
                                 "rotation_params": rotations, "params": params})


BITS_BACK = register_format(ExportFormat(
    name="bits-back",
    label="compact (bits-back)",
    expresses="rotated results (SliceGPT, DOTResize), bit-exact in one entropy-coded file smaller than safetensors; "
              "loads with SlimLab",
    check=check,
    write=write_bits_back,
    **FOLDER_FORMAT,
))
