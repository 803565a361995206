"""Per-session state and the process-wide model cache.

Original models are read-only (the engine compresses copies), so one loaded copy per spec is
shared by every session; everything a user produces (analysis, plans, compressed models,
evaluations, chats) lives in that user's ``Session`` and nowhere else.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from engine import (Cancelled, CancelToken, CompressionResult, LoadedModel, Plan, ResidualAnalysis, load_model,
                    release_freed_memory)

from .presets import Preset

DEVICE = os.environ.get("SLIMLAB_DEVICE", "auto")


class ModelCache:
    """Loaded originals by spec, least recently used evicted first; one load per spec at a time."""

    def __init__(self, capacity: int = 2, loader: Callable[..., LoadedModel] = load_model):
        self.capacity = capacity
        self.loader = loader
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._spec_locks: dict[str, threading.Lock] = {}

    def get(self, spec: str, log: Callable[[str], None] = lambda _msg: None) -> LoadedModel:
        spec = spec.strip()
        with self._lock:
            spec_lock = self._spec_locks.setdefault(spec, threading.Lock())
        with spec_lock:
            with self._lock:
                if spec in self._models:
                    self._models.move_to_end(spec)
                    return self._models[spec]
            lm = self.loader(spec, device=DEVICE, log=log)
            with self._lock:
                self._models[spec] = lm
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)  # sessions still holding it keep it alive
            return lm

    def __contains__(self, spec: str) -> bool:
        return spec.strip() in self._models


MODELS = ModelCache(capacity=int(os.environ.get("SLIMLAB_MODEL_CACHE", "2")))
# compressed models a session keeps for Chat and Evaluate (the newest); older runs keep their recipe and
# measurements but release their model (a demo-sized model is 0.5 GB in float32)
KEEP_MODELS = int(os.environ.get("SLIMLAB_KEEP_RUNS", "3"))


@dataclass
class RunRecord:
    """One compression run of this session: what was asked, what came out, what was measured."""

    run_id: int
    label: str
    summary: dict
    recipe: dict
    evals: dict = field(default_factory=dict)  # "perplexity" | "zeroshot" | "speed" -> results
    preset: Optional[Preset] = None  # the preset this run replayed unchanged (its measured quality applies)
    result: Optional[CompressionResult] = None  # the model, while the session keeps it (KEEP_MODELS)

    def title(self) -> str:
        """How pickers and panels name the run, e.g. ``run 3 · slicegpt 25% uniform (variant=shared) · 101.02 M``."""
        from .text import m

        return f"run {self.run_id} · {self.label} · {m(self.summary['params_total'])}"


@dataclass
class Session:
    """Everything one browser session owns. Fresh sessions hold no tensors, so gradio can copy them."""

    lm: Optional[LoadedModel] = None
    result: Optional[CompressionResult] = None
    run: Optional[RunRecord] = None  # the record of ``result``
    history: list[RunRecord] = field(default_factory=list)
    original_evals: dict = field(default_factory=dict)
    analysis: Optional[ResidualAnalysis] = None
    analysis_calibration: Optional[dict] = None
    plan: Optional[Plan] = None
    plan_key: Optional[tuple] = None  # settings the plan was built with (reused by Run when unchanged)
    scores: dict = field(default_factory=dict)  # calibration key -> block influence per layer
    chats: dict = field(default_factory=lambda: {"original": [], "compressed": []})
    chat_run: Optional[int] = None  # the run the compressed chat panel talks to (its conversation is chats["compressed"])
    saved: Optional[Path] = None
    cancel: Optional[CancelToken] = None
    preset: Optional[Preset] = None  # the preset (or recipe file) that last filled the Compress controls
    closed: bool = False  # its client left: a job that ends after that keeps nothing (see ``close``)

    def set_model(self, lm: LoadedModel) -> None:
        """A new base model invalidates everything derived from the old one (not the controls' preset)."""
        self._check_open()
        fresh = Session(preset=self.preset)
        self.__dict__.update(fresh.__dict__)
        self.lm = lm

    def set_result(self, result: CompressionResult, label: str) -> RunRecord:
        """A new run: the latest result (Export saves it), and the run Chat talks to; only the newest
        ``KEEP_MODELS`` runs keep their models."""
        self._check_open()
        record = RunRecord(len(self.history) + 1, label, _light_summary(result.summary()),
                           result.recipe.to_dict(), result=result)
        self.result, self.run, self.saved = result, record, None
        self.history.append(record)
        for old in self.history[:-KEEP_MODELS] if KEEP_MODELS > 0 else self.history[:-1]:
            old.result = None
        self.chat_run, self.chats["compressed"] = record.run_id, []
        return record

    def runs_with_models(self) -> list[RunRecord]:
        """The runs Chat and Evaluate can pick, newest first."""
        return [r for r in reversed(self.history) if r.result is not None]

    def find_run(self, run_id: Optional[int]) -> Optional[RunRecord]:
        """The run ``run_id`` (None: the newest), or None when there is none."""
        if run_id is None:
            return self.history[-1] if self.history else None
        try:
            wanted = int(run_id)
        except (TypeError, ValueError):  # not a run id at all (an API client's blank or typo)
            return None
        return next((r for r in self.history if r.run_id == wanted), None)

    def new_job(self) -> CancelToken:
        """A fresh cancel token for the job about to start (the Stop button sets it)."""
        self.cancel = CancelToken()
        return self.cancel

    def stop(self) -> bool:
        if self.cancel is None or self.cancel.cancelled:
            return False
        self.cancel.cancel()
        return True

    def close(self) -> None:
        """Called when the client's session ends: stop its job and drop the big objects. A job past its last
        Stop check still ends, but keeps nothing: the session is closed until its client comes back."""
        self.stop()
        self.__dict__.update(Session(closed=True).__dict__)

    def _check_open(self) -> None:
        if self.closed:
            raise Cancelled("This session ended (the page was closed); reload the page to start again.")


class LiveSessions:
    """Each connected client's ``Session`` by gradio session hash, so the app can free it soon after the
    client leaves. Gradio alone would not: it keeps a closed session's state for an hour, and calls a
    ``gr.State``'s delete_callback only for state that some event has output (ours is only ever an input).
    A client that left comes back within ``grace_s`` (a phone that put the tab to sleep) with its work intact."""

    def __init__(self, grace_s: float = float(os.environ.get("SLIMLAB_SESSION_GRACE_S", "60"))):
        self.grace_s = grace_s
        self._sessions: dict[str, Session] = {}
        self._leaving: dict[str, threading.Timer] = {}
        self._lock = threading.Lock()

    def track(self, key: str, session: Session) -> None:
        """``key``'s client sent an event on ``session`` (and so is here, whatever its heartbeat said)."""
        session.closed = False  # a client back after its session was freed starts afresh
        with self._lock:
            self._sessions[key] = session
            leaving = self._leaving.pop(key, None)
        if leaving is not None:
            leaving.cancel()

    def end(self, key: str) -> None:
        """``key``'s client left: free its session (runs, chats, analysis) unless it is back within the grace."""
        timer = threading.Timer(self.grace_s, self._close, args=(key,))
        timer.daemon = True
        with self._lock:
            if key not in self._sessions:
                return
            earlier = self._leaving.pop(key, None)
            self._leaving[key] = timer
        if earlier is not None:
            earlier.cancel()
        timer.start()

    def _close(self, key: str) -> None:
        with self._lock:
            if self._leaving.get(key) is not threading.current_thread():  # it came back meanwhile
                return
            del self._leaving[key]
            session = self._sessions.pop(key)
        session.close()
        release_freed_memory()  # the engine keeps freed heap for reuse; a server gives a departed user's back

    def get(self, key: str) -> Optional[Session]:
        with self._lock:
            return self._sessions.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


SESSIONS = LiveSessions()


def _light_summary(summary: dict) -> dict:
    """The summary without per-layer lists, small enough to keep for every run of the session."""
    return {k: v for k, v in summary.items() if k not in ("widths", "plan")}
