"""Streaming chat generation for several models at once, one token each per round.

Comparing an original and a compressed model is only fair with the same prompt (the
tokenizer's chat template), the same sampling settings and the same seed, so each model gets
its own seeded ``torch.Generator`` instead of the global RNG, and the models advance in
lock-step so both answers stream side by side. Speed is timed per model (its own forwards
only), so interleaving does not distort tokens/s.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .progress import CancelToken


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 64
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    seed: int = 0

    def check(self) -> "SamplingSettings":
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1 (got {self.max_new_tokens}).")
        # written so that a NaN fails every test
        if not (self.temperature >= 0 and 0 < self.top_p <= 1 and self.top_k >= 0 and self.repetition_penalty > 0):
            raise ConfigError("Sampling needs temperature >= 0, 0 < top_p <= 1, top_k >= 0 and a positive "
                              f"repetition penalty (got {self}).")
        return self


@dataclass
class Generation:
    """One model's answer so far, with its own timing."""

    text: str = ""
    tokens: int = 0
    seconds: float = 0.0  # time spent in this model's forwards and sampling
    first_token_s: Optional[float] = None  # prefill + first token
    done: bool = False
    stop_reason: str = ""  # "eos" | "length" | "cancelled"

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first over the time after the first (prefill excluded)."""
        if self.first_token_s is None or self.tokens < 2 or self.seconds <= self.first_token_s:
            return 0.0
        return (self.tokens - 1) / (self.seconds - self.first_token_s)


def chat_input_ids(tokenizer, messages: list[dict]) -> torch.Tensor:
    """The conversation rendered with the tokenizer's chat template, ready for the assistant turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("This tokenizer has no chat template, so it cannot chat; load an instruct/chat model.")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return ids["input_ids"]


def fitted_input_ids(tokenizer, messages: list[dict], context: Optional[int], max_new_tokens: int) -> torch.Tensor:
    """The prompt, with the oldest turns left out until it and the answer fit the model's context.

    A model attends over at most ``context`` positions; past them its answers are noise and the
    attention's memory grows with the square of the length. A system message and the newest user
    message are always kept: when those alone do not fit, the user is told by how much."""
    ids = chat_input_ids(tokenizer, messages)
    if not context:
        return ids
    budget = context - max_new_tokens
    if budget < 1:
        raise ConfigError(f"Max new tokens ({max_new_tokens}) must be below this model's context of {context} tokens.")
    system = [m for m in messages[:1] if m.get("role") == "system"]
    turns = messages[len(system):]
    while ids.shape[1] > budget and len(turns) > 1:
        turns = turns[1:]
        while len(turns) > 1 and turns[0].get("role") != "user":
            turns = turns[1:]
        ids = chat_input_ids(tokenizer, system + turns)
    if ids.shape[1] > budget:
        raise ConfigError(f"The message is {ids.shape[1]:,} tokens; this model reads at most {context:,}, "
                          f"{max_new_tokens} of them for its answer. Shorten the message or lower Max new tokens.")
    return ids


def _processors(settings: SamplingSettings):
    from transformers.generation.logits_process import (
        LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.temperature > 0:
        procs.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k > 0:
            procs.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            procs.append(TopPLogitsWarper(settings.top_p))
    return procs


class _Stepper:
    """Advances one model by one token per call, with a KV cache and its own seeded generator."""

    def __init__(self, model: nn.Module, tokenizer, messages: list[dict], settings: SamplingSettings):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.device = next(model.parameters()).device
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.prompt = fitted_input_ids(tokenizer, messages, context, settings.max_new_tokens).to(self.device)
        self.ids = self.prompt
        self.next_input = self.prompt
        self.cache = None
        self.generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        self.procs = _processors(settings)
        self.eos = _eos_ids(model, tokenizer)
        self.state = Generation()

    @torch.inference_mode()
    def step(self) -> None:
        t = time.perf_counter()
        # the head on the last position only: a prompt's full logits are 1 GB per 1,000 tokens of a 262K vocabulary
        out = self.model(input_ids=self.next_input, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        scores = self.procs(self.ids, out.logits[:, -1, :].float())
        if self.settings.temperature > 0:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self.generator)
        else:
            token = scores.argmax(dim=-1, keepdim=True)
        self.ids = torch.cat([self.ids, token], dim=-1)
        self.next_input = token
        s = self.state
        s.seconds += time.perf_counter() - t
        s.tokens += 1
        if s.first_token_s is None:
            s.first_token_s = s.seconds
        s.text = self.tokenizer.decode(self.ids[0, self.prompt.shape[1]:], skip_special_tokens=True)
        if token.item() in self.eos:
            s.done, s.stop_reason = True, "eos"
        elif s.tokens >= self.settings.max_new_tokens:
            s.done, s.stop_reason = True, "length"


def _eos_ids(model: nn.Module, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        ids.update(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
    return ids


def stream_chat(
    models: Sequence[tuple[nn.Module, object]],
    conversations: Sequence[list[dict]],
    settings: SamplingSettings = SamplingSettings(),
    cancel: Optional[CancelToken] = None,
) -> Iterator[list[Generation]]:
    """Yield every model's answer after each round; ``conversations[i]`` is model i's own history."""
    if len(models) != len(conversations):
        raise ConfigError(f"{len(models)} models but {len(conversations)} conversations.")
    settings.check()
    steppers = [_Stepper(m, tok, msgs, settings) for (m, tok), msgs in zip(models, conversations)]
    while not all(s.state.done for s in steppers):
        if cancel is not None and cancel.cancelled:
            for s in steppers:
                if not s.state.done:
                    s.state.done, s.state.stop_reason = True, "cancelled"
            yield [s.state for s in steppers]
            return
        for s in steppers:
            if not s.state.done:
                s.step()
        yield [s.state for s in steppers]
