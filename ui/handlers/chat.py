"""Chat tab: one prompt, both models answering side by side with the same sampling and seed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from engine import ConfigError, Generation, SamplingSettings
from engine import chat as engine_chat

from ..state import Session
from .common import need_model

NO_COMPRESSED = "No compressed model yet: run one in the Compress tab to compare."


@dataclass
class ChatView:
    original: list[dict]
    compressed: list[dict]
    original_stats: str
    compressed_stats: str


def stats(g: Optional[Generation]) -> str:
    if g is None:
        return NO_COMPRESSED
    if g.tokens == 0:
        return "…"
    first = f" · first token after {1000 * g.first_token_s:.0f} ms" if g.first_token_s is not None else ""
    speed = f"{g.tokens_per_s:.1f} tokens/s" if g.tokens > 1 else "– tokens/s"
    reason = {"eos": "finished", "length": "hit the token limit", "cancelled": "stopped"}.get(g.stop_reason, "")
    return f"**{speed}** (decode) · {g.tokens} tokens{first}" + (f" · {reason}" if g.done and reason else "")


def settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed) -> SamplingSettings:
    try:
        return SamplingSettings(int(max_new_tokens), float(temperature), float(top_p), int(top_k),
                                float(repetition_penalty), int(seed)).check()
    except (TypeError, ValueError):
        raise ConfigError("Sampling settings must be numbers.") from None


def chat(session: Session, prompt: str, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
         seed) -> Iterator[ChatView]:
    """Stream both answers; the conversation keeps whatever was generated, even when stopped."""
    lm = need_model(session)
    prompt = (prompt or "").strip()
    if not prompt:
        raise ConfigError("Type a prompt first.")
    sampling = settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
    names = ["original"] + (["compressed"] if session.result is not None else [])
    subjects = [lm] + ([session.result] if session.result is not None else [])
    for name in names:
        session.chats[name].append({"role": "user", "content": prompt})
    conversations = [list(session.chats[name]) for name in names]
    answers: list[Generation] = [Generation() for _ in names]
    try:
        for answers in engine_chat(subjects, conversations, sampling, session.new_job()):
            yield _view(session, names, answers)
    finally:
        for name, g in zip(names, answers):
            session.chats[name].append({"role": "assistant", "content": g.text})


def _view(session: Session, names: list[str], answers: list[Generation]) -> ChatView:
    by_name = dict(zip(names, answers))
    convo = {n: session.chats[n] + ([{"role": "assistant", "content": by_name[n].text}] if n in by_name else [])
             for n in ("original", "compressed")}
    return ChatView(convo["original"], convo["compressed"], stats(by_name["original"]),
                    stats(by_name.get("compressed")))


def current(session: Session) -> ChatView:
    """The conversations as the session holds them (after a new model or a new run)."""
    return ChatView(list(session.chats["original"]), list(session.chats["compressed"]), "",
                    "" if session.result is not None else NO_COMPRESSED)


def clear(session: Session) -> ChatView:
    session.chats = {"original": [], "compressed": []}
    return current(session)
