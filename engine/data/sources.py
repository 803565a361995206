"""Named text sources: a local data dir first (offline, reproducible), then the Hub.

A source spec is ``name[:split]`` (``wikitext2:test``, ``c4``, ``alpaca``, ``ptb``),
``file:PATH`` (txt, jsonl, json) or ``generated`` (text sampled from the model itself), or a
mixture ``A+B`` of such sources sharing the windows evenly (e.g. encyclopedic text and chats).
Chat sources (``alpaca-chat``, ``chat:file:PATH``, ``generated-chat``) are conversations, not
text: they are rendered through a model's chat template (``engine.data.chat``), so only a
caller that has the tokenizer can use them (calibration, recovery).
The data-dir layout is the one ``shared/data/SOURCES.md`` describes.
"""
from __future__ import annotations

import bz2
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import DataError
from ..models.hub import hub_reachable

DEFAULT_DATA_DIR_ENV = "SLIMLAB_DATA_DIR"

KNOWN_SOURCES = ("wikitext2", "c4", "ptb", "alpaca", "file:PATH", "generated", "alpaca-chat", "chat:file:PATH",
                 "generated-chat")
CHAT_SOURCES = ("alpaca-chat", "chat-file", "generated-chat")  # SourceSpec names rendered through a chat template


@dataclass(frozen=True)
class SourceSpec:
    name: str
    split: str
    path: Optional[str] = None

    def __str__(self) -> str:
        if self.name == "file":
            return f"file:{self.path}"
        if self.name == "chat-file":
            return f"chat:file:{self.path}"
        return f"{self.name}:{self.split}" if self.split else self.name

    @property
    def is_chat(self) -> bool:
        return self.name in CHAT_SOURCES


_DEFAULT_SPLIT = {"wikitext2": "test", "c4": "validation", "ptb": "test", "alpaca": "train", "generated": "",
                  "alpaca-chat": "train", "generated-chat": ""}
_ALIASES = {"wikitext": "wikitext2", "alpacachat": "alpaca-chat", "generatedchat": "generated-chat"}


def mixture_parts(spec: str) -> list[str]:
    """``wikitext2:train+alpaca-chat`` -> its sources (a mixture shares the windows evenly);
    a single source, or a file path that itself holds a ``+``, is one part."""
    spec = spec.strip()
    if "+" not in spec or (spec.startswith(("file:", "chat:file:")) and Path(spec.split("file:", 1)[1]).exists()):
        return [spec]
    return [part.strip() for part in spec.split("+")]


def mixture_counts(total: int, parts: int) -> list[int]:
    """Windows per part of a mixture: as even as possible, the first parts taking the remainder."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def parse_source(spec: str) -> SourceSpec:
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"Pick a text source (got {spec!r}). Known: {', '.join(KNOWN_SOURCES)}.")
    spec = spec.strip()
    if spec.startswith("file:"):
        return SourceSpec("file", "", spec[len("file:"):])
    if spec.startswith("chat:file:"):
        return SourceSpec("chat-file", "", spec[len("chat:file:"):])
    name, _, split = spec.partition(":")
    name = name.lower().replace("-", "")
    name = _ALIASES.get(name, name)
    if name not in _DEFAULT_SPLIT:
        raise DataError(f"Unknown text source '{spec}'. Known: {', '.join(KNOWN_SOURCES)}.")
    split = split or _DEFAULT_SPLIT[name]
    if name == "wikitext2" and split == "valid":
        split = "validation"
    return SourceSpec(name, split)


def data_dir(explicit: "str | os.PathLike | None" = None) -> Optional[Path]:
    """The local data dir: explicit argument, else $SLIMLAB_DATA_DIR, else none."""
    value = explicit or os.environ.get(DEFAULT_DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def load_text(
    spec: "str | SourceSpec",
    data_dir_path: "str | os.PathLike | None" = None,
    generate: Optional[Callable[[], str]] = None,
) -> str:
    """Return the source's text as one string (documents joined by blank lines).

    ``generate`` produces text for the ``generated`` source; the caller supplies it because
    only the caller has the model.
    """
    src = spec if isinstance(spec, SourceSpec) else parse_source(spec)
    if src.is_chat:
        raise DataError(f"'{src}' is a chat source: it is rendered through a model's chat template, so it can "
                        "calibrate or heal a model (--calib) but is not a text to evaluate on.")
    if src.name == "file":
        return _check(_read_file(Path(src.path)), str(src))
    if src.name == "generated":
        if generate is None:
            raise DataError("The 'generated' source needs a model to sample from.")
        return _check(generate(), str(src))
    root = data_dir(data_dir_path)
    if root is not None:
        local = _local_text(src, root)
        if local is not None:
            return _check(local, str(src))
    return _check(_hub_text(src, root), str(src))


def _check(text: str, label: str) -> str:
    if not text or not text.strip():
        raise DataError(f"Text source '{label}' is empty.")
    return text


def _read_raw(path: Path) -> str:
    if not path.exists():
        raise DataError(f"Text file not found: {path}")
    if path.suffix == ".bz2":
        raw = bz2.open(path, "rt", encoding="utf-8").read()
    else:
        raw = path.read_text(encoding="utf-8", errors="replace")
    return raw.replace("\r\n", "\n")


def read_records(path: Path) -> list:
    """The records of a .json (a list, or one record) or .jsonl file."""
    raw = _read_raw(path)
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in raw.splitlines() if line.strip()]
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}).") from None
    return data if isinstance(data, list) else [data]


def _read_file(path: Path) -> str:
    if path.suffix in (".json", ".jsonl"):
        return "\n\n".join(_record_text(r) for r in read_records(path))
    return _read_raw(path)


def _record_text(record) -> str:
    """Text of one JSON record: a 'text' field, an Alpaca triple, or all string values."""
    if isinstance(record, str):
        return record
    if "text" in record:
        return str(record["text"])
    if "instruction" in record:
        parts = [record.get("instruction", ""), record.get("input", ""), record.get("output", "")]
        return "\n".join(p for p in parts if p)
    return "\n".join(str(v) for v in record.values() if isinstance(v, str))


def _local_text(src: SourceSpec, root: Path) -> Optional[str]:
    """Text from the data dir, or None when this source/split has no local copy."""
    if src.name == "wikitext2":
        if src.split == "test":
            for rel in ("wikitext2/test.txt", "wikitext2/wiki.test.raw"):
                p = root / rel
                if p.exists():
                    text = p.read_text(encoding="utf-8").replace("\r\n", "\n")
                    return text if rel.endswith("test.txt") else _raw_lines_to_rows(text)
        if src.split == "validation":
            p = root / "wikitext2/tokenized/wiki.valid.tokens"
            if p.exists():
                return p.read_text(encoding="utf-8")
        return None
    if src.name == "c4":
        p = root / "calibration/c4_demo.jsonl"
        return _read_file(p) if p.exists() else None
    if src.name == "alpaca":
        p = root / ALPACA_LOCAL
        return _read_file(p) if p.exists() else None
    return None


ALPACA_LOCAL = "calibration/alpaca_en_demo.json"


def _raw_lines_to_rows(text: str) -> str:
    """wiki.test.raw layout (one row a line, empty rows as ' ') back to the HF join."""
    rows = ["" if line == " " else line + "\n" for line in text.split("\n")[:-1]]
    return "\n\n".join(rows)


_HUB = {
    ("wikitext2", "*"): ("wikitext", "wikitext-2-raw-v1", "text"),
    ("ptb", "*"): ("ptb_text_only", "penn_treebank", "sentence"),
    ("c4", "*"): ("allenai/c4", "en", "text"),
    ("alpaca", "*"): ("tatsu-lab/alpaca", None, "text"),
}


def _hub_text(src: SourceSpec, root: Optional[Path]) -> str:
    name, config, field = _HUB[(src.name, "*")]
    kwargs = {"data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"}} if src.name == "c4" else {}
    ds = hub_dataset(src, root, name, config, **kwargs)
    if src.name == "c4":
        ds = ds.select(range(min(len(ds), 3000)))
    return "\n\n".join(ds[field])


def hub_dataset(src: SourceSpec, root: Optional[Path], name: str, config: Optional[str], **kwargs):
    """``datasets.load_dataset(name, config, split=src.split)``, or one clear DataError (offline, or any failure)."""
    where = f"the data dir {root}" if root else f"a data dir (set ${DEFAULT_DATA_DIR_ENV} or --data-dir)"
    if not hub_reachable():  # datasets would retry for half a minute first
        raise DataError(
            f"Could not load '{src}': no local copy in {where}, and the Hugging Face Hub is unreachable "
            f"(offline?). Point ${DEFAULT_DATA_DIR_ENV} at a data dir that has this source."
        )
    try:
        import datasets

        return datasets.load_dataset(name, config, split=src.split, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise DataError(
            f"Could not load '{src}': no local copy in {where}, and the Hugging Face Hub failed "
            f"({type(exc).__name__}: {str(exc)[:200]}). If you are offline, point "
            f"${DEFAULT_DATA_DIR_ENV} at a data dir that has this source."
        ) from exc
