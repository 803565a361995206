"""`slimlab methods` and `slimlab schedules`: what the registries hold, with each parameter's
default, type and range, so `--param`/`--schedule-param` can be written without reading code."""
from __future__ import annotations

import argparse
from typing import Callable

from ..methods import available_methods
from ..schedules import available_schedules
from .common import emit, param_lines

LISTINGS: dict[str, tuple[Callable[[], dict], tuple[str, ...], str]] = {
    # command: (registry, flags shown beside name and label, help)
    "methods": (available_methods, ("needs_calibration", "uses_plan"), "list the compression methods (--param)"),
    "schedules": (available_schedules, ("needs_scores",), "list the per-layer schedules (--schedule-param)"),
}


def register(sub) -> None:
    for command, (_, _, help_text) in LISTINGS.items():
        p = sub.add_parser(command, help=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
        p.set_defaults(func=run, listing=command)


def entries(command: str) -> list[dict]:
    registry, flags, _ = LISTINGS[command]
    return [{"name": name, "label": item.label, "summary": item.summary}
            | {flag: getattr(item, flag) for flag in flags} | {"params": item.schema()}
            for name, item in registry().items()]


def run(args: argparse.Namespace) -> int:
    items = entries(args.listing)
    lines = []
    for item in items:
        flags = [key for key, value in item.items() if value is True]
        lines += [f"{item['name']}  {item['label']}" + (f"  [{', '.join(flags)}]" if flags else "")]
        lines += param_lines(item["params"]) or ["    (no parameters)"]
    return emit(args, lines, {args.listing: items})
