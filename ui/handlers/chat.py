"""Chat tab: one prompt, the original and a compressed run of the session answering side by side with
the same sampling and seed. The compressed panel talks to the run picked in its dropdown (the newest by
default) and names it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from engine import ConfigError, Generation, SamplingSettings
from engine import chat as engine_chat

from ..state import RunRecord, Session
from .common import NotReady, need_model, whole, within

NO_COMPRESSED = "No compressed model yet: run one in the Compress tab to compare."


@dataclass
class ChatView:
    original: list[dict]
    compressed: list[dict]
    original_stats: str
    compressed_stats: str
    compressed_label: str  # the panel's title: which run answers
    compressed_placeholder: str


def stats(g: Optional[Generation]) -> str:
    if g is None:
        return NO_COMPRESSED
    if g.tokens == 0:
        return "…"
    first = f" · first token after {1000 * g.first_token_s:.0f} ms" if g.first_token_s is not None else ""
    speed = f"{g.tokens_per_s:.1f} tokens/s" if g.tokens > 1 else "– tokens/s"
    reason = {"eos": "finished", "length": "hit the token limit", "cancelled": "stopped"}.get(g.stop_reason, "")
    return f"**{speed}** (decode) · {g.tokens} tokens{first}" + (f" · {reason}" if g.done and reason else "")


# (label, minimum, maximum) of each sampling control, read by the Chat tab's sliders and checked here
SAMPLING = {"max_new_tokens": ("Max new tokens", 1, 512), "temperature": ("Temperature", 0.0, 2.0),
            "top_p": ("top-p", 0.05, 1.0), "top_k": ("top-k", 0, 200),
            "repetition_penalty": ("Repetition penalty", 1.0, 2.0)}
MAX_SEED = 2**32 - 1  # what every generator takes


def settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed) -> SamplingSettings:
    """The sampling the controls say, each value inside its slider's range (an API client can send any)."""
    values = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                  repetition_penalty=repetition_penalty)
    checked = {name: (whole if isinstance(low, int) else within)(values[name], label, low, high)
               for name, (label, low, high) in SAMPLING.items()}
    return SamplingSettings(**checked, seed=whole(seed, "Seed", 0, MAX_SEED)).check()


def chat_run(session: Session) -> Optional[RunRecord]:
    """The run the compressed panel talks to, if its model is still kept."""
    run = session.find_run(session.chat_run) if session.chat_run is not None else None
    return run if run is not None and run.result is not None else None


def pick_run(session: Session, run_id: Optional[int]) -> ChatView:
    """Talk to another run: its panel starts a new conversation (the original's goes on)."""
    if run_id is not None and run_id != session.chat_run:
        run = session.find_run(run_id)
        if run is None or run.result is None:
            raise NotReady(f"Run {run_id} is no longer kept in memory (only the newest runs are); pick another.")
        session.chat_run, session.chats["compressed"] = run.run_id, []
    return current(session)


def chat(session: Session, prompt: str, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
         seed) -> Iterator[ChatView]:
    """Stream both answers; the conversation keeps whatever was generated, even when stopped."""
    lm = need_model(session)
    prompt = (prompt or "").strip()
    if not prompt:
        raise ConfigError("Type a prompt first.")
    sampling = settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
    run = chat_run(session)
    names = ["original"] + (["compressed"] if run is not None else [])
    subjects = [lm] + ([run.result] if run is not None else [])
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


def _panel(session: Session) -> tuple[str, str]:
    """The compressed panel's title and its placeholder: the run it answers with, or that there is none."""
    run = chat_run(session)
    if run is None:
        return "Compressed", NO_COMPRESSED
    return f"Compressed: {run.title()}", f"{run.title()} answers here."


def _view(session: Session, names: list[str], answers: list[Generation]) -> ChatView:
    by_name = dict(zip(names, answers))
    convo = {n: session.chats[n] + ([{"role": "assistant", "content": by_name[n].text}] if n in by_name else [])
             for n in ("original", "compressed")}
    return ChatView(convo["original"], convo["compressed"], stats(by_name["original"]),
                    stats(by_name.get("compressed")), *_panel(session))


def current(session: Session) -> ChatView:
    """The conversations as the session holds them (after a new model, a new run, a picked run)."""
    return ChatView(list(session.chats["original"]), list(session.chats["compressed"]), "",
                    "" if chat_run(session) is not None else NO_COMPRESSED, *_panel(session))


def clear(session: Session) -> ChatView:
    session.chats = {"original": [], "compressed": []}
    return current(session)
