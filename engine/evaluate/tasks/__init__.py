"""Local lm-eval task definitions over the data dir (used when the Hub is out of reach)."""
from .local import LOCAL_TASKS, LocalTask, build_task, get_local_task, load_docs

__all__ = ["LOCAL_TASKS", "LocalTask", "build_task", "get_local_task", "load_docs"]
