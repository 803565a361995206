"""Local lm-eval task definitions: the stock tasks' prompts over the files in the data dir.

Offline, the Hub datasets the stock tasks load are out of reach, so each task here reads its
file from the data dir and hands lm-eval a ``ConfigurableTask`` whose prompt, choices, target
and metrics copy the stock YAML (lm-eval 0.4 ``tasks/{piqa,hellaswag,arc,winogrande,
super_glue/boolq,openbookqa}``). Known differences, all from the stored files, not from us:
HellaSwag's converted file keeps ``ctx_b`` uncapitalised, and ARC's converted files have
exactly four choices per item (SOURCES.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ...data import data_dir as resolve_data_dir
from ...errors import ConfigError, DataError
from . import readers

ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}


@dataclass(frozen=True)
class LocalTask:
    """One task: where its items come from, how many SOURCES.md promises, how lm-eval prompts them."""

    name: str
    read: Callable[[Path], list[dict]]
    count: int  # item count stated in SOURCES.md
    split: str  # the split of the stock task these items are
    doc_to_text: Callable[[dict], "str | int"]
    doc_to_choice: Callable[[dict], list[str]]
    doc_to_target: Callable[[dict], "int | str"]
    has_acc_norm: bool = True


def _winogrande_text(doc: dict) -> int:
    # multiple-input task: the "text" is the gold context's index; contexts are the choices
    return {"1": 0, "2": 1}[doc["answer"]]


def _winogrande_choices(doc: dict) -> list[str]:
    cut = doc["sentence"].index("_")
    return [doc["sentence"][:cut] + option for option in (doc["option1"], doc["option2"])]


def _winogrande_target(doc: dict) -> str:
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


LOCAL_TASKS: dict[str, LocalTask] = {t.name: t for t in (
    LocalTask("piqa", readers.read_piqa, 1838, "validation",
              lambda d: f"Question: {d['goal']}\nAnswer:", lambda d: [d["sol1"], d["sol2"]], lambda d: d["label"]),
    LocalTask("hellaswag", readers.read_hellaswag, 10042, "validation",
              lambda d: d["query"], lambda d: d["choices"], lambda d: d["label"]),
    LocalTask("arc_easy", readers.read_arc_easy, 2376, "test",
              lambda d: f"{d['query']}\nAnswer:", lambda d: d["choices"], lambda d: d["gold"]),
    LocalTask("arc_challenge", readers.read_arc_challenge, 1172, "test",
              lambda d: f"{d['query']}\nAnswer:", lambda d: d["choices"], lambda d: d["gold"]),
    LocalTask("winogrande", readers.read_winogrande, 1267, "validation",
              _winogrande_text, _winogrande_choices, _winogrande_target, has_acc_norm=False),
    LocalTask("boolq", readers.read_boolq, 3270, "validation",
              lambda d: f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", lambda d: ["no", "yes"],
              lambda d: d["label"], has_acc_norm=False),
    LocalTask("openbookqa", readers.read_openbookqa, 500, "test",
              lambda d: d["question_stem"], lambda d: d["choices"], lambda d: d["gold"]),
)}


def get_local_task(name: str) -> LocalTask:
    if name not in LOCAL_TASKS:
        raise ConfigError(f"Unknown zero-shot task '{name}'. Choose from: {', '.join(LOCAL_TASKS)}.")
    return LOCAL_TASKS[name]


def data_root(data_dir: "str | Path | None" = None) -> Path:
    root = resolve_data_dir(data_dir)
    if root is None:
        raise DataError(
            "Offline zero-shot needs a data dir: set $SLIMLAB_DATA_DIR or pass --data-dir "
            "(see shared/data/SOURCES.md), or connect to the Hugging Face Hub for the stock tasks."
        )
    return root


def load_docs(name: str, data_dir: "str | Path | None" = None) -> list[dict]:
    """All items of a task, checked against the count SOURCES.md gives (a mismatch is a wrong file)."""
    task = get_local_task(name)
    docs = task.read(data_root(data_dir))
    if len(docs) != task.count:
        raise DataError(f"The data dir's {name} file has {len(docs)} items but SOURCES.md says {task.count}; "
                        "re-copy it from shared/data.")
    return docs


def build_task(name: str, data_dir: "str | Path | None" = None, docs: Optional[list[dict]] = None):
    """An lm-eval ``ConfigurableTask`` over the local items (zero-shot, no training split)."""
    import datasets
    from lm_eval.api.task import ConfigurableTask

    task = get_local_task(name)
    docs = load_docs(name, data_dir) if docs is None else docs
    split = datasets.DatasetDict({task.split: datasets.Dataset.from_list(docs)})
    config = {
        "task": name,
        "custom_dataset": lambda **_: split,
        "output_type": "multiple_choice",
        f"{task.split}_split": task.split,
        "doc_to_text": task.doc_to_text,
        "doc_to_choice": task.doc_to_choice,
        "doc_to_target": task.doc_to_target,
        "metric_list": [dict(ACC), dict(ACC_NORM)] if task.has_acc_norm else [dict(ACC)],
        "metadata": {"version": 1.0, "source": "slimlab local data dir"},
    }
    return ConfigurableTask(config=config)
