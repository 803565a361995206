"""Arguments and output shared by every subcommand."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from ..errors import ConfigError
from ..loader import check_model_spec, load_model
from ..models import LoadedModel, check_dtype, resolve_device
from ..progress import TqdmProgress
from ..calibration import check_source

MODEL_HELP = "'demo', a Hugging Face id, a local folder, a .gguf file, or a SlimLab output folder"


def add_model_args(p: argparse.ArgumentParser, name: str = "model") -> None:
    p.add_argument(name, help=MODEL_HELP)
    add_runtime_args(p)


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16")
    p.add_argument("--trust-remote-code", action="store_true", help="run custom model code from the repo")
    p.add_argument("--data-dir", default=None, help="local data dir (default: $SLIMLAB_DATA_DIR)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(precheck=check_runtime_args)


def check_runtime_args(args) -> None:
    """``--dtype`` and ``--device``, refused before a command does anything (``cli.main`` calls it)."""
    check_dtype(args.dtype)
    resolve_device(args.device)


def check_specs(*specs: Optional[str]) -> list[str]:
    """The model specs given, each refused now if no load could succeed, before the first loads."""
    given = [s for s in specs if s]
    for spec in given:
        check_model_spec(spec)
    return given


def check_report_dir(out: Optional[str]) -> None:
    """A report folder that could not be written, refused before any model is loaded: a file in
    its place, or a nearest existing parent that is no writable folder."""
    if out is None:
        return
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out '{out}' is a file; give a folder for the report.")
    parent = next(p for p in (path, *path.parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out '{out}' cannot be written ('{parent}' is not a writable folder).")


def require_at_least(args, minimum: int, *names: str) -> None:
    """Refuse integer options below ``minimum`` before anything is loaded (None: not given)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise ConfigError(f"--{name.replace('_', '-')} takes an integer >= {minimum} (got {value}).")


def check_dataset(spec: str, flag: str) -> None:
    try:
        check_source(spec)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def check_out_dir(out: Optional[str], force: bool) -> None:
    """The save step's refusal, made before the model is loaded and the run is spent."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not force:
        raise ConfigError(f"'{out}' already exists and is not empty; pass --force to overwrite it.")


def param_lines(schema: list[dict], indent: str = "    ") -> list[str]:
    """One line per parameter: name = default, kind and range or choices, help."""
    lines = []
    for p in schema:
        kind = "|".join(map(str, p["choices"])) if p["choices"] else p["kind"]
        if p["minimum"] is not None or p["maximum"] is not None:
            kind += f" in [{p['minimum']}, {p['maximum']}]"
        lines.append(f"{indent}{p['name']} = {p['default']!r}  ({kind})  {p['help']}")
    return lines


def apply_data_dir(args) -> None:
    if getattr(args, "data_dir", None):
        os.environ["SLIMLAB_DATA_DIR"] = args.data_dir


def load(args, spec: str | None = None, stream: bool = False) -> LoadedModel:
    """``stream``: a safetensors folder's layers stay on disk until a pass reads them."""
    apply_data_dir(args)
    log = (lambda msg: print(msg, file=sys.stderr))
    return load_model(spec or args.model, device=args.device, dtype=args.dtype,
                      trust_remote_code=args.trust_remote_code, log=log, stream=stream)


def progress(args) -> TqdmProgress:
    return TqdmProgress(disable=getattr(args, "quiet", False))


def emit(args, lines: Iterable[str], payload: dict[str, Any]) -> int:
    for line in lines:
        print(line)
    if getattr(args, "json", False):
        print(json.dumps(payload, default=str))
    return 0
