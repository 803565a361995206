"""Arguments and output shared by every subcommand."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Iterable

from ..models import LoadedModel, load_model
from ..progress import TqdmProgress


def add_model_args(p: argparse.ArgumentParser, name: str = "model") -> None:
    p.add_argument(name, help="'demo', a Hugging Face id, a local folder, a .gguf file, or a SlimLab output folder")
    add_runtime_args(p)


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16")
    p.add_argument("--trust-remote-code", action="store_true", help="run custom model code from the repo")
    p.add_argument("--data-dir", default=None, help="local data dir (default: $SLIMLAB_DATA_DIR)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def apply_data_dir(args) -> None:
    if getattr(args, "data_dir", None):
        os.environ["SLIMLAB_DATA_DIR"] = args.data_dir


def load(args, spec: str | None = None) -> LoadedModel:
    apply_data_dir(args)
    log = (lambda msg: print(msg, file=sys.stderr))
    return load_model(spec or args.model, device=args.device, dtype=args.dtype,
                      trust_remote_code=args.trust_remote_code, log=log)


def progress(args) -> TqdmProgress:
    return TqdmProgress(disable=getattr(args, "quiet", False))


def emit(args, lines: Iterable[str], payload: dict[str, Any]) -> int:
    for line in lines:
        print(line)
    if getattr(args, "json", False):
        print(json.dumps(payload, default=str))
    return 0
