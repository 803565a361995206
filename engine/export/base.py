"""The export-format protocol, its registry, and the one driver every format shares.

A format says what it can express (``expresses``, shown in help and in refusals), checks a
result's ``slimlab.json`` before anything is loaded (``check``), and writes into a path the
driver hands it (``write``). The driver validates the arguments, picks the output path and
makes the write atomic: the format writes a temp file or folder beside the output, which is
renamed into place only when the write finished, so a failure leaves no partial file.
"""
from __future__ import annotations

import json
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..atomic import atomic_dir, atomic_file
from ..compressed import is_compressed, result_meta
from ..errors import ConfigError, CorruptWeightsError
from ..models.loaded import SLIMLAB_META

DTYPES = ("f32", "f16", "bf16")
# methods whose results have SliceGPT's structure (a rotated, narrower residual stream): label by name
ROTATED_RESIDUAL = {"slicegpt": "SliceGPT", "dotresize": "DOTResize"}
KNOWN_FORMATS = ("hf", "gguf", "decilm", "bits-back")  # named in help even before their module registers; the order menus show
# methods whose blocks read and write their own subsets of the residual channels (index lists per block)
SELECTED_CHANNELS = {"disp-llm": "DISP-LLM"}


def selected_channels(meta: dict) -> Optional[str]:
    """What a result whose blocks each read and write their own residual channels is, in words; else None."""
    name = SELECTED_CHANNELS.get(meta.get("method"))
    return f"{name}'s per-block channel selections (each block reads and writes its own residual channels)" \
        if name else None


def extra_structure(meta: dict) -> Optional[str]:
    """What a result holds beyond a stock decoder's weights (side branches, per-block channel selections), in
    words; None when it has neither. llama.cpp and DeciLM refuse both the same way."""
    if meta.get("compensation"):
        return "low-rank side branches (compensation)"
    return selected_channels(meta)


class NotExpressible(ConfigError):
    """The format has no way to write this result's shapes exactly."""


@dataclass
class ExportJob:
    """What a format's ``write`` gets: the result folder, its slimlab.json, where to write, how."""

    source: Path
    meta: dict
    target: Path  # a temp file (``writes == "file"``) or an empty temp folder; renamed into place after
    dtype: str  # one of DTYPES
    log: Callable[[str], None] = print


@dataclass
class ExportReport:
    """What was written, for the CLI's lines and its JSON."""

    format: str
    path: str = ""
    dtype: str = ""  # what was written: a writer that resolves "auto" sets it, else the dtype asked for
    bytes: int = 0
    architecture: str = ""  # what the file says it is, e.g. "llama" or "deci"
    notes: list[str] = field(default_factory=list)  # what the user should know (padding cost, ...)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    label: str
    expresses: str  # one sentence: which results this format can write
    writes: str  # "file" or "folder"
    suffix: str  # the default output's ending, e.g. ".gguf"
    check: Callable[[dict], None]  # slimlab.json -> None, or raises NotExpressible (before loading)
    write: Callable[[ExportJob], ExportReport]
    dtypes: tuple[str, ...] = DTYPES
    default_dtype: str = "f16"  # used when --dtype is not given
    run: str = ""  # the command that runs the output in its engine, ``{path}`` standing for it (model cards, notes)


REGISTRY: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    if fmt.name in REGISTRY:
        raise ConfigError(f"An export format named '{fmt.name}' is already registered.")
    if fmt.writes not in ("file", "folder"):
        raise ConfigError(f"Export format '{fmt.name}': writes must be 'file' or 'folder'.")
    REGISTRY[fmt.name] = fmt
    return fmt


def unregister_format(name: str) -> None:
    REGISTRY.pop(name, None)


def available_formats() -> dict[str, ExportFormat]:
    from . import load_all

    load_all()
    rank = {name: i for i, name in enumerate(KNOWN_FORMATS)}
    return dict(sorted(REGISTRY.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def get_format(name: str) -> ExportFormat:
    formats = available_formats()
    if name not in formats:
        what = "is not available in this installation" if name in KNOWN_FORMATS else "is unknown"
        raise ConfigError(f"Export format '{name}' {what}. Available: {', '.join(formats) or 'none'}.")
    return formats[name]


def read_result(source: "str | Path") -> dict:
    """The slimlab.json of a SlimLab result folder, with the folder's config.json under ``config``
    (what a format's ``check`` needs to judge the architecture), or a clear refusal."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"'{source}' does not exist.")
    if not path.is_dir() or not is_compressed(path):
        raise ConfigError(f"'{source}' is not a SlimLab result (no {SLIMLAB_META}); export takes a folder "
                          "written by `slimlab compress --out`.")
    try:
        meta = json.loads((path / SLIMLAB_META).read_text())
        config = path / "config.json"
        return meta | {"config": json.loads(config.read_text()) if config.is_file() else {}}
    except (OSError, ValueError) as exc:
        raise CorruptWeightsError(f"'{path}' has an unreadable {SLIMLAB_META} or config.json ({exc}). "
                                  "Compress the model again.") from exc


def default_output(source: Path, fmt: ExportFormat, dtype: str) -> Path:
    """Beside the result: ``<name>-<dtype>.gguf`` for a file, ``<name>-<format>`` for a folder."""
    stem = f"{source.name}-{dtype}" if fmt.writes == "file" else f"{source.name}-{fmt.name}"
    return source.parent / (stem + fmt.suffix)


def check_output(out: Path, fmt: ExportFormat, force: bool) -> None:
    """Refuse an output that exists (without ``force``) or cannot be written, before any load."""
    if out.exists():
        if fmt.writes == "file" and out.is_dir():
            raise ConfigError(f"'{out}' is a folder; --out for {fmt.name} names a file (e.g. model{fmt.suffix}).")
        if fmt.writes == "folder" and not out.is_dir():
            raise ConfigError(f"'{out}' is a file; --out for {fmt.name} names a folder.")
        if not force and (out.is_file() or any(out.iterdir())):
            raise ConfigError(f"'{out}' already exists; pass --force to overwrite it.")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=f".{out.name}.probe-")
        probe.close()
    except OSError as exc:
        raise ConfigError(f"Cannot write to '{parent}' ({exc.strerror or exc}); pick another output path (--out).") from None


def _format_and_dtype(format_name: str, dtype: Optional[str]) -> tuple[ExportFormat, str]:
    fmt = get_format(format_name)
    dtype = dtype or fmt.default_dtype
    if dtype not in fmt.dtypes:
        raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(fmt.dtypes)} (format {fmt.name}).")
    return fmt, dtype


def check_result(result, format_name: str, dtype: Optional[str] = None) -> tuple[ExportFormat, str]:
    """The checks ``plan_export`` makes on a saved folder, made on a CompressionResult still in memory: a result
    the format cannot express is refused at once, before anything is saved. (format, dtype)."""
    fmt, dtype = _format_and_dtype(format_name, dtype)
    fmt.check(result_meta(result) | {"config": result.model.config.to_dict()})
    return fmt, dtype


def plan_export(source: "str | Path", format_name: str, dtype: Optional[str] = None, out: "str | Path | None" = None,
                force: bool = False) -> tuple[ExportFormat, str, dict, Path]:
    """Every check an export makes before loading anything: (format, dtype, slimlab.json, output path)."""
    fmt, dtype = _format_and_dtype(format_name, dtype)
    meta = read_result(source)
    fmt.check(meta)
    path = Path(out) if out is not None else default_output(Path(source), fmt, dtype)
    check_output(path, fmt, force)
    return fmt, dtype, meta, path


def export(source: "str | Path", format_name: str, dtype: Optional[str] = None, out: "str | Path | None" = None,
           force: bool = False, log: Optional[Callable[[str], None]] = None) -> ExportReport:
    """Export a SlimLab result folder; the output appears only once it is complete."""
    fmt, dtype, meta, path = plan_export(source, format_name, dtype, out, force)
    log = log or (lambda _msg: None)
    if fmt.writes == "folder":
        with atomic_dir(path, force=True) as tmp:
            report = fmt.write(ExportJob(Path(source), meta, tmp, dtype, log))
    else:
        report = _write_file(fmt, ExportJob(Path(source), meta, path, dtype, log))
    report.format, report.path, report.dtype = fmt.name, str(path), report.dtype or dtype
    report.bytes = _size(path)
    if fmt.run:
        report.notes.append(f"run it with: {fmt.run.format(path=shlex.quote(str(path)))}")
    return report


def _write_file(fmt: ExportFormat, job: ExportJob) -> ExportReport:
    final = job.target
    with atomic_file(final) as tmp:
        job.target = tmp
        try:
            return fmt.write(job)
        finally:
            job.target = final


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
