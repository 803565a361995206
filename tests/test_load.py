"""The app under simultaneous sessions: bench/load_test.py's users (load, compress, chat, evaluate) driven
through gradio_client against the app in this process, on tiny random models."""
from __future__ import annotations

import gc
import time
import weakref

import pytest
from benches import load_bench

pytest.importorskip("gradio_client")


def _load_test():
    return load_bench("load_test")


def _wait(condition, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        gc.collect()
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_a_session_is_freed_after_its_client_leaves_unless_it_comes_back_within_the_grace(tiny, monkeypatch):
    import ui.state
    from engine import Cancelled
    from ui.state import LiveSessions, Session

    trims = []
    monkeypatch.setattr(ui.state, "release_freed_memory", lambda: trims.append(1))
    sessions = LiveSessions(grace_s=0.3)
    kept, left = Session(), Session()
    kept.lm = left.lm = tiny("llama")  # stands for a loaded model
    sessions.track("kept", kept)
    sessions.track("left", left)
    sessions.end("kept")
    sessions.end("left")
    sessions.track("kept", kept)  # an event from it: the client is back (a phone woke the tab)
    assert _wait(lambda: trims, 5)  # freed, and the freed heap given back to the OS: the last step
    assert sessions.get("left") is None and left.lm is None and len(sessions) == 1
    time.sleep(0.5)
    assert trims == [1] and sessions.get("kept") is kept and kept.lm is not None
    sessions.end("nobody")  # a client that sent no event: nothing to free
    assert len(sessions) == 1
    # a job that ends after its session was freed keeps nothing; the client, back, starts afresh
    with pytest.raises(Cancelled, match="session ended"):
        left.set_model(kept.lm)
    assert left.lm is None
    sessions.track("left", left)
    left.set_model(kept.lm)
    assert left.lm is kept.lm


@pytest.mark.slow
def test_four_sessions_stay_apart_are_queued_share_originals_and_are_freed_when_they_leave(app_url, tiny_dirs,
                                                                                          monkeypatch):
    from ui.state import MODELS, SESSIONS

    monkeypatch.setattr(SESSIONS, "grace_s", 0.5)
    lt = _load_test()
    llama, qwen = str(tiny_dirs["llama"]), str(tiny_dirs["qwen2"])
    plans = [lt.SessionPlan(0, llama, 0.2), lt.SessionPlan(1, llama, 0.22), lt.SessionPlan(2, qwen, 0.24),
             lt.SessionPlan(3, qwen, 0.26)]
    reports, clients = lt.run_sessions(app_url, plans, keep_open=True)
    try:
        # every session finished, and each step saw only its own model, ratio and run (run_session checks)
        assert [r.error for r in reports] == [None] * 4
        assert all([s.name for s in r.steps] == ["load_model", "compress", "chat", "perplexity"] for r in reports)
        # one heavy job at a time: jobs submitted together waited, and the queue said where they stood
        positions = [p for r in reports for s in r.steps for p in s.positions]
        assert positions and all(0 <= p < len(plans) for p in positions)

        sessions = [SESSIONS.get(r.session_hash) for r in reports]
        assert all(s is not None for s in sessions)
        assert [s.lm.spec for s in sessions] == [llama, llama, qwen, qwen]
        assert [round(s.run.recipe["ratio"], 4) for s in sessions] == [0.2, 0.22, 0.24, 0.26]
        # one loaded original per model, shared; each session's compressed model its own
        assert sessions[0].lm is sessions[1].lm and sessions[2].lm is sessions[3].lm
        assert len({id(s.result.model) for s in sessions}) == 4
        results = [weakref.ref(s.result) for s in sessions]
        original = weakref.ref(sessions[0].lm)
        del sessions
    finally:
        for c in clients:
            c.close()
    # the clients left: after the grace the app frees their sessions (runs, chats), not after gradio's hour
    hashes = [r.session_hash for r in reports]
    assert _wait(lambda: all(SESSIONS.get(h) is None for h in hashes)), "sessions still tracked after their clients left"
    assert _wait(lambda: all(r() is None for r in results)), "a session's compressed model outlived its session"
    assert original() is not None and llama in MODELS  # the shared original stays cached for the next user
