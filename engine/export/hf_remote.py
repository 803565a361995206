"""``slimlab export DIR --format hf``: a result as a transformers folder in the dtype asked for, loadable
without SlimLab; the self-contained code itself is part of the saved format (``engine.compressed.remote_code``).
"""
from __future__ import annotations

import json

from ..compressed.format import read_state
from ..compressed.remote_code import MODELING_FILE, write_remote_code
from ._folder import copy_side_files, resolve_dtype, save_weights, set_config_dtype
from .base import DTYPES, ExportFormat, ExportJob, ExportReport, register_format


def write_hf(job: ExportJob) -> ExportReport:
    """``slimlab export DIR --format hf``: the result as a folder transformers loads on its own, in the
    original checkpoint's dtype unless told otherwise; slimlab.json travels along, so SlimLab reads it too."""
    dtype = resolve_dtype(job.dtype, job.meta)
    copy_side_files(job.source, job.target, skip=(MODELING_FILE,))
    job.log(f"writing the weights in {dtype}")
    save_weights(read_state(job.source), job.target, dtype)
    config = set_config_dtype(job.target, dtype)
    remote = write_remote_code(job.target)  # strict: a module it cannot rebuild is refused, nothing is left
    loads = ("AutoModelForCausalLM.from_pretrained(PATH, trust_remote_code=True)" if remote
             else "AutoModelForCausalLM.from_pretrained(PATH) (a plain checkpoint, no remote code)")
    notes = [f"weights in {dtype}" + (" (the original checkpoint's dtype)" if job.dtype == "auto" else ""),
             f"loads with {loads}"]
    architecture = "SlimLabForCausalLM" if remote else json.loads((job.target / "config.json").read_text())[
        "architectures"][0]
    return ExportReport(dtype=dtype, format="hf", architecture=architecture, notes=notes,
                        details={"dtype": dtype, "remote_code": remote, "model_type": config.get("model_type")})


HF = register_format(ExportFormat(
    name="hf",
    label="transformers folder",
    expresses="every result, as a transformers folder: a plain checkpoint when the stock config says its shapes, "
              "else with modeling_slimlab.py (trust_remote_code=True, no SlimLab needed)",
    writes="folder",
    suffix="",
    check=lambda meta: None,
    write=write_hf,
    dtypes=("auto",) + DTYPES,
    default_dtype="auto",
))
