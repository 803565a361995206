"""Readers for the zero-shot files in the data dir (formats in shared/data/SOURCES.md).

Each reader turns one publisher's (or converter's) layout into plain dicts holding the
fields the stock lm-eval prompt of that task uses, so the local task and the stock task
build the same requests wherever the files allow it. Text is kept exactly as stored.
"""
from __future__ import annotations

import bz2
import json
from pathlib import Path

from ...errors import DataError

HELLASWAG_LINES_PER_ITEM = 6  # context, label, four endings (llama.cpp layout)


def _open_text(path: Path) -> str:
    if not path.exists():
        raise DataError(
            f"Missing zero-shot data file '{path}'. Point $SLIMLAB_DATA_DIR (or --data-dir) at a data dir "
            "laid out as in shared/data/SOURCES.md, or run online to use the stock lm-eval tasks."
        )
    if path.suffix == ".bz2":
        with bz2.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in _open_text(path).splitlines() if line.strip()]


def _labels(path: Path) -> list[int]:
    return [int(line) for line in _open_text(path).splitlines() if line.strip()]


def _zip_labels(items: list[dict], labels: list[int], path: Path) -> list[int]:
    if len(labels) != len(items):
        raise DataError(f"'{path}' has {len(labels)} labels for {len(items)} items; re-copy the data dir.")
    return labels


def read_piqa(root: Path) -> list[dict]:
    items = _jsonl(root / "piqa" / "valid.jsonl")
    labels = _zip_labels(items, _labels(root / "piqa" / "valid-labels.lst"), root / "piqa" / "valid-labels.lst")
    return [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": y} for d, y in zip(items, labels)]


def read_winogrande(root: Path) -> list[dict]:
    # dev.jsonl carries its own "answer" ("1"/"2"); SOURCES.md checks it equals dev-labels.lst.
    return [{k: d[k] for k in ("sentence", "option1", "option2", "answer")}
            for d in _jsonl(root / "winogrande" / "dev.jsonl")]


def _read_arc(path: Path) -> list[dict]:
    # llm-foundry layout: "query" already reads "Question: <stem>"
    return [{"query": d["query"], "choices": d["choices"], "gold": int(d["gold"])} for d in _jsonl(path)]


def read_arc_easy(root: Path) -> list[dict]:
    return _read_arc(root / "arc" / "llmfoundry_arc_easy_test.jsonl")


def read_arc_challenge(root: Path) -> list[dict]:
    return _read_arc(root / "arc" / "llmfoundry_arc_challenge_test.jsonl")


def read_hellaswag(root: Path) -> list[dict]:
    path = root / "hellaswag" / "hellaswag_val_full.txt.bz2"
    lines = _open_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % HELLASWAG_LINES_PER_ITEM:
        raise DataError(f"'{path}' has {len(lines)} lines, not a multiple of 6; re-copy the data dir.")
    return [{"query": lines[i], "label": int(lines[i + 1]), "choices": lines[i + 2 : i + 6]}
            for i in range(0, len(lines), HELLASWAG_LINES_PER_ITEM)]


def read_boolq(root: Path) -> list[dict]:
    return [{"passage": d["passage"], "question": d["question"], "label": int(bool(d["answer"]))}
            for d in _jsonl(root / "boolq" / "dev.jsonl")]


def read_openbookqa(root: Path) -> list[dict]:
    docs = []
    for d in _jsonl(root / "openbookqa" / "test.jsonl"):
        choices = d["question"]["choices"]
        letters = [c["label"] for c in choices]
        docs.append({"question_stem": d["question"]["stem"], "choices": [c["text"] for c in choices],
                     "gold": letters.index(d["answerKey"].strip())})
    return docs
