"""`slimlab cache list|clear`: what SlimLab keeps on disk (converted models, token ids,
downloads), how big it is, and a way to free it. Everything there can be rebuilt."""
from __future__ import annotations

import time

from ..cache import cache_root
from ..models.converted import cache_entries, clear_cache
from .common import emit

KINDS = ("demo", "gguf", "tokens", "downloads", "spool")


def register(sub) -> None:
    p = sub.add_parser("cache", help="list or clear SlimLab's cache (converted GGUF models, demo, token ids)")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("--kind", action="append", choices=KINDS,
                   help="with clear: only this kind (repeatable); default: every kind but the demo model")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=run)


def _row(entry) -> dict:
    return {"kind": entry.kind, "name": entry.name, "path": str(entry.path), "bytes": entry.bytes,
            "last_used": time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))}


def run(args) -> int:
    if args.action == "clear":
        kinds = tuple(args.kind or (k for k in KINDS if k != "demo"))
        rows = [_row(e) for e in clear_cache(kinds)]
        freed = sum(r["bytes"] for r in rows)
        lines = [f"removed {r['kind']:<9} {r['name']}" for r in rows] + [f"freed {freed / 2**20:,.1f} MiB"]
        return emit(args, lines, {"removed": rows, "freed_bytes": freed})
    rows = [_row(e) for e in cache_entries()]
    total = sum(r["bytes"] for r in rows)
    lines = [f"cache {cache_root()}"]
    lines += [f"{r['kind']:<9} {r['bytes'] / 2**20:>10,.1f} MiB  {r['last_used']}  {r['name']}" for r in rows]
    lines.append(f"total     {total / 2**20:>10,.1f} MiB")
    return emit(args, lines, {"root": str(cache_root()), "entries": rows, "total_bytes": total})
