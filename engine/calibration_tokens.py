"""Drawing a ``CalibrationSpec``'s token windows: the one job of this module.

``make_calibration`` fills in a spec's ``tokens``; ``token_drawer`` is the same as a function of the
spec alone, for the stages that draw their own text (recovery, vocabulary counts, searched plans).
It sits below ``engine.compress`` and ``engine.vocabulary`` so both can draw without importing
each other.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import torch

from .data import calibration_windows, load_text
from .data.sources import mixture_counts, mixture_parts
from .memory import CALIBRATION_OOM_ADVICE, out_of_memory_as_error
from .models import LoadedModel
from .recipes import CalibrationSpec


@out_of_memory_as_error("drawing the calibration text", CALIBRATION_OOM_ADVICE)  # `generated` runs the model
def make_calibration(lm: LoadedModel, spec: CalibrationSpec, data_dir: Optional[str] = None) -> CalibrationSpec:
    """``spec`` with its token windows drawn (``tokens``); a mixture ``A+B`` takes its windows evenly from each
    source."""
    parts = mixture_parts(spec.source)
    tokens = torch.cat([_windows(lm, source, n, spec.seqlen, spec.seed, data_dir)
                        for source, n in zip(parts, mixture_counts(spec.nsamples, len(parts))) if n])
    return replace(spec, tokens=tokens)


def token_drawer(lm: LoadedModel, data_dir: Optional[str]) -> Callable[[CalibrationSpec], torch.Tensor]:
    """What stages that draw their own text (recovery, vocabulary counts, searched plans) call."""
    return lambda spec: make_calibration(lm, spec, data_dir).tokens


def _windows(lm: LoadedModel, source: str, nsamples: int, seqlen: int, seed: int,
             data_dir: Optional[str]) -> torch.Tensor:
    from .data.chat import chat_windows, is_chat_source
    from .data.generated import sample_text

    if is_chat_source(source):  # rendered through the chat template, packed from whole chats
        return chat_windows(lm, source, nsamples, seqlen, seed, data_dir)
    text = load_text(source, data_dir, generate=lambda: sample_text(lm, nsamples, seqlen, seed))
    return calibration_windows(lm.tokenizer, text, nsamples, seqlen, seed)
