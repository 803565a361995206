"""`slimlab export DIR --format gguf|hf|decilm`: write a result in a format other engines run.

Everything is checked before the result is loaded: the format, the dtype, that DIR is a
SlimLab result the format can express, and that the output can be written. The output
appears only when complete (temp + rename).
"""
from __future__ import annotations

import sys

from ..export import KNOWN_FORMATS, available_formats, export
from .common import emit


def register(sub) -> None:
    formats = available_formats()
    names = sorted(set(KNOWN_FORMATS) | set(formats))
    p = sub.add_parser("export", help=f"export a compressed result ({', '.join(names)})")
    p.add_argument("source", metavar="DIR", help="a folder written by `slimlab compress --out`")
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help="; ".join(f"{f.name}: {f.expresses}" for f in formats.values()) or ", ".join(names))
    p.add_argument("--dtype", default=None, help="f32 | f16 | bf16, or for gguf also q8_0 | q4_0 | q4_1 "
                   "(default: the format's, f16 for gguf)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="output file or folder (default: beside DIR, e.g. DIR-f16.gguf)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args) -> int:
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    report = export(args.source, args.format, args.dtype, args.out, args.force, log=log)
    lines = [f"wrote {report.path} ({report.format}"
             + (f", {report.architecture}" if report.architecture else "")
             + f", {report.dtype}, {report.bytes / 1e6:.1f} MB)"]
    lines += [f"note: {n}" for n in report.notes]
    return emit(args, lines, report.to_dict())
