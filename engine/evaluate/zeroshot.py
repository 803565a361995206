"""Zero-shot accuracy through lm-eval on a model already in memory.

Offline, the tasks are local definitions over the data dir (``engine.evaluate.tasks``);
online, the stock lm-eval tasks. Both keep ``acc`` and ``acc_norm``; the summary uses
``acc_norm`` where a task reports it and ``acc`` otherwise, as SliceGPT's tables do.
``limit`` picks a seeded random subset per task (not the first N items, which for some
files are sorted by source and would bias the estimate).
"""
from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Iterator, Optional

from ..errors import ConfigError, DataError
from ..models.hub import hub_reachable
from ..progress import CancelToken, Reporter, as_reporter
from .tasks import LOCAL_TASKS, build_task
from .tasks.local import data_root
from ..memory import EVAL_OOM_ADVICE, out_of_memory_as_error

TASKS: tuple[str, ...] = tuple(LOCAL_TASKS)
PAPER_TASKS: tuple[str, ...] = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande")
ITEM_COUNTS: dict[str, int] = {name: task.count for name, task in LOCAL_TASKS.items()}
SUMMARY_METRIC_RULE = "acc_norm where the task reports it, else acc (as SliceGPT); mean = unweighted task mean"
PROTOCOL = "lm-eval 0-shot log-likelihood multiple choice, no chat template"
TASK_SOURCES = ("auto", "local", "hub")
STAGE = "zero-shot"


@dataclass
class TaskScore:
    acc: float
    acc_norm: Optional[float]
    acc_stderr: Optional[float]  # None when there is none (lm-eval's "N/A" for a single item)
    acc_norm_stderr: Optional[float]
    metric: str  # the one the summary uses
    n: int

    @property
    def value(self) -> float:
        return self.acc_norm if self.metric == "acc_norm" else self.acc


@dataclass
class ZeroShotResult:
    tasks: dict[str, TaskScore]
    offline: bool
    task_source: str
    limit: Optional[int]
    seed: int
    batch_size: int
    seconds: float
    summary_metric_rule: str = SUMMARY_METRIC_RULE
    protocol: str = PROTOCOL
    mean: float = field(init=False)

    def __post_init__(self) -> None:
        self.mean = sum(s.value for s in self.tasks.values()) / len(self.tasks)

    def to_dict(self) -> dict:
        return asdict(self)


def subsample_indices(n: int, limit: Optional[int], seed: int, task: str) -> Optional[list[int]]:
    """Seeded subset of item indices (None: all items); a per-task seed keeps tasks independent."""
    if limit is None or limit >= n:
        return None
    return sorted(random.Random(f"{seed}:{task}").sample(range(n), limit))


@contextlib.contextmanager
def _no_retie(model) -> Iterator[None]:
    """HFLM calls ``model.tie_weights()``; a SliceGPT head is untied on purpose and must stay so."""
    model.tie_weights = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del model.tie_weights


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs per-task chatter at WARNING; keep the CLI and UI output to our own progress."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@lru_cache(maxsize=1)
def _reporting_hflm():
    """HFLM that reports every forward batch and honours the cancel token (lm-eval imported lazily)."""
    from lm_eval.models.huggingface import HFLM

    class ReportingHFLM(HFLM):
        def __init__(self, *args, reporter: Reporter, **kwargs):
            super().__init__(*args, **kwargs)
            self._reporter = reporter
            self._done = self._total = 0

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)  # our reporter draws the bar

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            longest = max((len(continuation) for _, _, continuation in requests), default=0)
            if longest > self.max_length:  # lm-eval would stop on a bare assert
                raise ConfigError(f"An answer of {longest:,} tokens is longer than the model's context "
                                  f"({self.max_length:,} positions): this model cannot be scored on these tasks.")
            self._done, self._total = 0, len(requests)
            self._reporter(STAGE, 0, self._total, f"{self._total} choices")
            out = super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)
            self._reporter(STAGE, self._total, self._total, "done")
            return out

        def _model_call(self, inps, attn_mask=None, labels=None):
            self._reporter.check()
            logits = super()._model_call(inps, attn_mask, labels)
            # rows can be fewer than requests (shared contexts are batched once), so clamp
            self._done = min(self._done + inps.shape[0], self._total)
            self._reporter(STAGE, self._done, self._total)
            return logits

    return ReportingHFLM


def make_lm(model, tokenizer, batch_size: int = 8, reporter: Optional[Reporter] = None):
    """Wrap an in-memory model for lm-eval without touching its head tying."""
    with _no_retie(model), _quiet_lm_eval():
        return _reporting_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                                 reporter=reporter or Reporter())


def _resolve_offline(source: str) -> bool:
    if source not in TASK_SOURCES:
        raise ConfigError(f"Unknown task source '{source}'. Use one of: {', '.join(TASK_SOURCES)}.")
    return source == "local" or (source == "auto" and not hub_reachable())


def _load_tasks(names: list[str], offline: bool, data_dir) -> dict:
    if offline:
        return {name: build_task(name, data_dir) for name in names}
    from lm_eval.tasks import TaskManager

    try:
        return TaskManager().load(names)["tasks"]
    except Exception as exc:  # noqa: BLE001 - dataset download errors come in many types
        raise DataError(f"Could not load the stock lm-eval tasks {names} from the Hub ({type(exc).__name__}: "
                        f"{str(exc)[:200]}). Run with the local tasks instead (--task-source local).") from exc


def _score(metrics: dict, n: int) -> TaskScore:
    acc_norm = metrics.get("acc_norm,none")
    return TaskScore(acc=float(metrics["acc,none"]), acc_norm=None if acc_norm is None else float(acc_norm),
                     acc_stderr=_stderr(metrics.get("acc_stderr,none")),
                     acc_norm_stderr=None if acc_norm is None else _stderr(metrics.get("acc_norm_stderr,none")),
                     metric="acc" if acc_norm is None else "acc_norm", n=n)


def _stderr(value) -> Optional[float]:
    """lm-eval's standard error, or None where it has none: "N/A" for a single item (``--limit 1``)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def check_tasks(tasks: "list[str] | str") -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise ConfigError(f"No zero-shot task given. Choose from: {', '.join(TASKS)}.")
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ConfigError(f"Unknown zero-shot task(s) {', '.join(unknown)}. Choose from: {', '.join(TASKS)}.")
    return list(dict.fromkeys(names))


@out_of_memory_as_error("running zero-shot tasks", EVAL_OOM_ADVICE)
def run_zeroshot(
    model,
    tokenizer,
    tasks: "list[str] | str",
    limit: Optional[int] = None,
    batch_size: int = 8,
    data_dir: Optional[str] = None,
    seed: int = 1234,
    progress=None,
    cancel: Optional[CancelToken] = None,
    source: str = "auto",
) -> dict:
    """Zero-shot accuracy per task; ``source`` is auto (Hub reachable -> stock tasks), local or hub.

    Returns ``ZeroShotResult.to_dict()``: ``{"tasks": {name: {acc, acc_norm, acc_stderr,
    acc_norm_stderr, metric, n}}, "mean", "summary_metric_rule", "offline", ...}``.
    """
    from lm_eval.evaluator import evaluate

    names = check_tasks(tasks)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be a positive number of items per task (got {limit}).")
    reporter = as_reporter(progress)
    if cancel is not None:
        reporter = Reporter(callback=reporter.callback, cancel=cancel)
    offline = _resolve_offline(source)
    t0 = time.perf_counter()
    with _quiet_lm_eval():
        loaded = _load_tasks(names, offline, data_dir)
        samples = {}
        for name, task in loaded.items():
            task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=seed)
            picked = subsample_indices(len(task.eval_docs), limit, seed, name)
            if picked is not None:
                samples[name] = picked
        reporter.check()
        lm = make_lm(model, tokenizer, batch_size, reporter)
        out = evaluate(lm=lm, task_dict={"tasks": loaded, "groups": {}, "group_map": {}},
                       # > 0 turns stderr on; acc/acc_norm are means, so their stderr is closed-form, not resampled
                       samples=samples or None, bootstrap_iters=1000, log_samples=False)
    scores = {name: _score(out["results"][name], int(out["n-samples"][name]["effective"])) for name in names}
    where = (f"local task definitions over {data_root(data_dir)}" if offline
             else "stock lm-eval tasks (Hugging Face Hub)")
    return ZeroShotResult(tasks=scores, offline=offline, task_source=where, limit=limit, seed=seed,
                          batch_size=batch_size, seconds=time.perf_counter() - t0).to_dict()
