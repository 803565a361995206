"""`slimlab` command line: each module in engine/commands registers its subcommands.

Each command prints human-readable lines and, with --json, one JSON object as the last
line of stdout (scripts and the UI parse it). Progress bars go to stderr.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands
from .errors import SlimLabError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimlab", description="Structured compression of LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "precheck", None):
            args.precheck(args)
        return int(args.func(args) or 0)
    except SlimLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
