"""Models converted once and kept in the cache as safetensors checkpoints.

Dequantizing a GGUF takes minutes for a 0.5B model; reading the same weights back from
safetensors takes seconds. So a ``.gguf`` is converted on first use and kept under
``<cache>/gguf/<key>``, where the key hashes the file's size, modification time and first MiB:
an edited or replaced file gets a new entry, an untouched one is found again. The demo model's
cache is written the same way (``save_converted``). The GGUF entries are bounded in size
(``$SLIMLAB_GGUF_CACHE_GB``, default 20): the least recently used go first.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..atomic import atomic_dir
from ..cache import cache_root

SOURCE_FILE = "slimlab_source.json"
GGUF_CACHE_GB = 20.0
_HEADER_BYTES = 1 << 20


def gguf_cache_dir() -> Path:
    return cache_root() / "gguf"


def gguf_key(path: Path) -> str:
    """Size, mtime and the first MiB (header and metadata): cheap to compute, changes when the file does."""
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:".encode())
    with open(path, "rb") as f:
        digest.update(f.read(_HEADER_BYTES))
    return digest.hexdigest()[:24]


def cached_gguf(path: Path) -> Optional[Path]:
    """The converted checkpoint of this exact file, marked as just used; None if not converted yet."""
    entry = gguf_cache_dir() / gguf_key(path)
    if not (entry / SOURCE_FILE).exists():
        return None
    os.utime(entry / SOURCE_FILE)  # last use, for eviction
    return entry


def save_converted(model, tokenizer, target: Path, source: dict) -> Path:
    """Write a checkpoint folder atomically (temp folder renamed into place), without any
    quantization config, with ``source`` recorded beside it."""
    with atomic_dir(target, force=True) as tmp:
        model.config.quantization_config = None
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text())
        if "quantization_config" in config:
            del config["quantization_config"]
            config_path.write_text(json.dumps(config, indent=2))
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    return target


def store_gguf(path: Path, model, tokenizer) -> Path:
    """Keep a dequantized GGUF model in the cache, then trim the cache to its bound."""
    stat = path.stat()
    entry = save_converted(model, tokenizer, gguf_cache_dir() / gguf_key(path), {
        "source": "gguf", "file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        "converted": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    evict_gguf(keep=entry)
    return entry


@dataclass(frozen=True)
class CacheEntry:
    """One thing in the cache, as `slimlab cache list` shows it."""

    kind: str  # demo | gguf | tokens | downloads | spool
    name: str
    path: Path
    bytes: int
    last_used: float  # seconds since the epoch


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cache_entries() -> list[CacheEntry]:
    """What the cache holds: each converted model on its own, the other folders as one entry each."""
    root = cache_root()
    entries = []
    for kind in ("demo", "gguf"):
        for folder in sorted((root / kind).glob("*")) if (root / kind).is_dir() else []:
            marker = folder / SOURCE_FILE
            if not marker.exists():
                continue
            source = json.loads(marker.read_text())
            name = source.get("file") or folder.name
            entries.append(CacheEntry(kind, name, folder, _folder_bytes(folder), marker.stat().st_mtime))
    for kind in ("tokens", "downloads", "spool"):
        folder = root / kind
        if folder.is_dir():
            entries.append(CacheEntry(kind, kind, folder, _folder_bytes(folder), folder.stat().st_mtime))
    return entries


def evict_gguf(keep: Optional[Path] = None, limit_bytes: Optional[int] = None) -> list[Path]:
    """Remove the least recently used GGUF conversions until the rest fit the bound."""
    if limit_bytes is None:
        limit_bytes = int(float(os.environ.get("SLIMLAB_GGUF_CACHE_GB", GGUF_CACHE_GB)) * 2**30)
    gguf = sorted((e for e in cache_entries() if e.kind == "gguf"), key=lambda e: e.last_used)
    total = sum(e.bytes for e in gguf)
    removed = []
    for entry in gguf:
        if total <= limit_bytes:
            break
        if keep is not None and entry.path == keep:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        total -= entry.bytes
        removed.append(entry.path)
    return removed


def clear_cache(kinds: tuple[str, ...]) -> list[CacheEntry]:
    """Delete the entries of the given kinds; everything here can be rebuilt."""
    removed = [e for e in cache_entries() if e.kind in kinds]
    for entry in removed:
        shutil.rmtree(entry.path, ignore_errors=True)
    return removed
