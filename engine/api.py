"""UI-facing helpers: every call takes what a front end holds, a loaded model or a compression result.

The engine's internals take ``(model, adapter, tokens, ...)`` because methods and the driver
need the pieces; a front end should not. These wrappers keep the UI (and notebooks) away from
``lm.model``/``lm.adapter`` and from the internal module layout, so the engine can move
things around (the sequential driver, new analyses) without touching ``ui/``.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Protocol, Sequence

from .analysis import account
from .analysis.modules import ModuleParams
from .analysis.layer_scores import block_influence as _block_influence
from .analysis.modules import module_params as _module_params
from .analysis.spectra import ResidualAnalysis
from .analysis.spectra import residual_analysis as _residual_analysis
from .calibration import CalibrationSpec
from .compressed import vocabulary_trimmed
from .errors import ConfigError
from .evaluate import ChatCheckResult, LambadaResult, PerplexityResult, chat_check, lambada, measure_speed, perplexity, \
    run_zeroshot
from .generate import Generation, SamplingSettings, stream_chat
from .memory import CALIBRATION_OOM_ADVICE, out_of_memory_as_error
from .models import LoadedModel
from .progress import CancelToken, ProgressCallback, Reporter
from .transforms.compensation import CompensationRequest, planned_params, planned_ranks


class Subject(Protocol):
    """Anything with a model and its tokenizer: a ``LoadedModel`` or a ``CompressionResult`` (either may carry
    a ``reference_tokenizer``: a trimmed vocabulary's original, which perplexity counts tokens in)."""

    model: Any
    tokenizer: Any


NO_REFERENCE_NOTE = ("note: this model's vocabulary was trimmed and its original tokenizer (reference_tokenizer/) "
                     "is not with it, so this ppl is per its own tokens, which split rare words into more pieces: "
                     "not comparable with the original model's ppl")


def _ppl_reference(subject: Subject) -> tuple[Any, str]:
    """The tokenizer a subject's ppl counts tokens in (None: its own) and the note a report must show: a
    trimmed vocabulary without its original is measured per its own tokens, and says so."""
    reference = getattr(subject, "reference_tokenizer", None)
    if reference is None and vocabulary_trimmed(getattr(subject, "meta", None) or {}):
        return None, NO_REFERENCE_NOTE
    return reference, ""


def num_layers(lm: LoadedModel) -> int:
    """Number of transformer layers (the length every per-layer plan must have)."""
    return len(lm.adapter.layers(lm.model))


def model_summary(lm: LoadedModel) -> dict:
    """Accounting plus, for a SlimLab output folder, the method and per-layer widths it applied.

    Shared by ``slimlab info``, ``slimlab eval``/``bench`` reports and the UI's Model tab, so all
    three print the same numbers.
    """
    meta = lm.meta or {}
    summary = account(lm.model, lm.adapter, lm.path, meta.get("params_added_detail")).to_dict() | {"spec": lm.spec}
    if meta:
        summary |= {"method": meta["method"], "widths": meta["widths"], "recipe": meta["recipe"]}
    return summary


def has_chat_template(subject: Subject) -> bool:
    """Whether the tokenizer renders chats (an instruct model): then chat calibration (``alpaca-chat``)
    fits it better than Wikipedia text, and the chat check can run."""
    return bool(getattr(subject.tokenizer, "chat_template", None))


def params_total(lm: LoadedModel) -> int:
    """Total parameters, each tensor once (a tied head is not counted twice)."""
    return account(lm.model, lm.adapter).params_total


def compensation_plan(lm: LoadedModel, spec: CompensationRequest) -> tuple[list[int], int]:
    """(the branch rank of each layer, the parameters the branches add at most) for a recipe's
    compensation on this model: what a share of each layer's parameters buys, before anything runs."""
    layers = lm.adapter.layers(lm.model)
    return planned_ranks(layers, lm.adapter, spec), planned_params(layers, lm.adapter, spec)


def module_params(lm: LoadedModel) -> ModuleParams:
    """Where the parameters are: per module type and per layer group."""
    return _module_params(lm.model, lm.adapter)


@out_of_memory_as_error("analysing the residual stream", CALIBRATION_OOM_ADVICE)
def residual_analysis(lm: LoadedModel, calibration: CalibrationSpec,
                      progress: "Reporter | None" = None) -> ResidualAnalysis:
    """Residual spectra at every layer and block influence, in one read-only calibration pass."""
    return _residual_analysis(lm.model, lm.adapter, calibration.tokens, calibration.batch_size, progress)


@out_of_memory_as_error("scoring the layers (block influence)", CALIBRATION_OOM_ADVICE)
def block_influence(lm: LoadedModel, calibration: CalibrationSpec, progress: "Reporter | None" = None) -> list[float]:
    """Per-layer ``1 - cos(input, output)`` on the calibration tokens (what score-driven schedules rank by)."""
    return _block_influence(lm.model, lm.adapter, calibration.tokens, calibration.batch_size, progress)


def chat(subjects: Sequence[Subject], conversations: Sequence[list[dict]],
         settings: SamplingSettings = SamplingSettings(), cancel: Optional[CancelToken] = None
         ) -> Iterator[list[Generation]]:
    """Stream every subject's answer to its own conversation, one token each per round (same seed)."""
    return stream_chat([(s.model, s.tokenizer) for s in subjects], conversations, settings, cancel)


def evaluate_perplexity(subject: Subject, dataset: str = "wikitext2", seqlen: int = 2048,
                        max_windows: Optional[int] = None, data_dir: Optional[str] = None,
                        progress: "Reporter | ProgressCallback | None" = None, batch_size: int = 1
                        ) -> PerplexityResult:
    """Perplexity by the paper protocol (see ``engine.evaluate.perplexity``); a trimmed vocabulary's per
    original token (the same text as the original model's), or with a note when its original is missing."""
    reference, note = _ppl_reference(subject)
    result = perplexity(subject.model, subject.tokenizer, dataset, seqlen, max_windows, batch_size, data_dir,
                        progress, reference_tokenizer=reference)
    result.note = note
    return result


def evaluate_zeroshot(subject: Subject, tasks: Sequence[str], limit: Optional[int] = None,
                      data_dir: Optional[str] = None, progress: Optional[ProgressCallback] = None,
                      cancel: Optional[CancelToken] = None) -> dict:
    """Zero-shot accuracy per task (``ZeroShotResult.to_dict()``)."""
    return run_zeroshot(subject.model, subject.tokenizer, list(tasks), limit, data_dir=data_dir, progress=progress,
                        cancel=cancel)


def evaluate_speed(subject: Subject, prefill_len: int = 512, decode_tokens: int = 32,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> dict:
    """Prefill/decode throughput and memory on this machine (``SpeedResult.to_dict()``)."""
    return measure_speed(subject.model, subject.tokenizer, prefill_len, decode_tokens, progress=progress,
                         cancel=cancel)


def evaluate_chat_check(subject: Subject, progress: "Reporter | ProgressCallback | None" = None) -> ChatCheckResult:
    """Greedy answers to the short factual questions of ``assets/chat_check.json``; hits contain the keyword."""
    return chat_check(subject.model, subject.tokenizer, progress=progress)


def evaluate_lambada(subject: Subject, limit: Optional[int] = None, data_dir: Optional[str] = None,
                     progress: "Reporter | ProgressCallback | None" = None) -> LambadaResult:
    """LAMBADA (OpenAI) last-word accuracy from the data dir (all items, or a seeded ``limit``)."""
    return lambada(subject.model, subject.tokenizer, limit, data_dir=data_dir, progress=progress)


def zeroshot_tasks() -> list[str]:
    """The zero-shot tasks the engine can run offline and online."""
    from .evaluate import TASKS

    return list(TASKS)


def zeroshot_item_counts(tasks: Sequence[str]) -> dict[str, int]:
    """How many items each task has in the data dir (as SOURCES.md states them): the most a ``limit``
    can pick; no data is read."""
    from .evaluate.zeroshot import ITEM_COUNTS, check_tasks

    return {name: ITEM_COUNTS[name] for name in check_tasks(list(tasks))}


def context_length(subject: Subject) -> Optional[int]:
    """The most positions the model takes (its config's ``max_position_embeddings``); None when it does not say."""
    return getattr(getattr(subject.model, "config", None), "max_position_embeddings", None)


def perplexity_windows(subject: Subject, dataset: str = "wikitext2", seqlen: int = 2048,
                       data_dir: Optional[str] = None) -> int:
    """How many whole windows of ``seqlen`` tokens the evaluation text holds: the most ``max_windows`` can
    measure (the text is tokenized once and cached, so ``evaluate_perplexity`` reuses it). A ``seqlen``
    beyond the model's context is refused: learned positions would fail there, and rotary ones extrapolate."""
    from .data import eval_windows, load_text

    context = context_length(subject)
    if context is not None and seqlen > context:
        raise ConfigError(f"seqlen {seqlen:,} is longer than the model's context ({context:,} positions).")
    reference = _ppl_reference(subject)[0]  # a trimmed vocabulary's windows are its original tokenizer's
    tokenizer = subject.tokenizer if reference is None else reference
    return eval_windows(tokenizer, load_text(dataset, data_dir), seqlen).shape[0]
