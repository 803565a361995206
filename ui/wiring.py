"""Glue between plain handlers and gradio: progress bars, friendly errors, the shared queue.

Handlers take ``progress`` as an engine callback and raise engine errors; here those become a
``gr.Progress`` bar and a toast, so a bad input never breaks the session: a failure is a ``gr.Error``
toast, a Stop a ``gr.Warning`` one, and neither replaces what the outputs showed (a failed event
updates nothing; a stopped one skips its outputs).
"""
from __future__ import annotations

import inspect
import logging
import os
import typing
from typing import Callable, Optional

import gradio as gr

from engine import Cancelled, ProgressEvent, SlimLabError

from .state import SESSIONS, Session

log = logging.getLogger("slimlab.ui")

# Heavy work (loading, calibration, compression, evaluation, generation) shares one queue:
# on a CPU box two jobs at once only make both slower and double the memory.
HEAVY = dict(concurrency_id="heavy", concurrency_limit=int(os.environ.get("SLIMLAB_UI_CONCURRENCY", "1")))
LIGHT = dict(concurrency_limit=None, show_progress="hidden")


def heavy(job: "gr.components.Component") -> dict:
    """A heavy event's options: the shared queue, and one progress bar, on the tab's ``job`` line, instead of
    one over every output (so a failure marks that line, never the plots and tables it leaves as they were)."""
    return HEAVY | {"show_progress_on": [job]}


def progress_callback(bar: "gr.Progress") -> Callable[[ProgressEvent], None]:
    def report(event: ProgressEvent) -> None:
        desc = f"{event.stage}: {event.message}" if event.message else event.stage
        bar((event.step, event.total) if event.total else None, desc=desc)

    return report


def _friendly(exc: Exception) -> gr.Error:
    if isinstance(exc, SlimLabError):
        return gr.Error(str(exc))
    log.exception("unexpected error in a UI handler")
    return gr.Error(f"Unexpected error ({type(exc).__name__}: {str(exc)[:300]}). Your session is intact; "
                    "change the inputs and try again.")


def _signature(fn: Callable) -> tuple[inspect.Signature, bool, int]:
    """The handler's positional parameters, with a ``gr.Progress()`` default where it takes progress, then a
    ``gr.Request`` one (gradio fills it; ``_track`` reads it); also whether it takes progress, and how many
    parameters are the handler's own."""
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_progress = bool(params) and params[-1].name == "progress"
    if has_progress:
        params[-1] = params[-1].replace(default=gr.Progress())
    request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                annotation=gr.Request)
    return inspect.Signature(params + [request]), has_progress, len(params)


def _track(args: list, own: int) -> list:
    """The handler's own arguments. Gradio passes the client's request after them: the session this event
    works on is noted as that client's, so the app can free it the moment the client leaves."""
    if len(args) <= own:  # called directly, not by gradio
        return args
    request = args.pop()
    if request is not None and request.session_hash and args and isinstance(args[0], Session):
        SESSIONS.track(request.session_hash, args[0])
    return args


def _handler_args(args: tuple, own: int, has_progress: bool) -> list:
    """The handler's own arguments (see ``_track``), its progress argument turned into our callback."""
    args = _track(list(args), own)
    if has_progress:
        args[-1] = progress_callback(args[-1])
    return args


GRADIO_FILLED = (gr.OAuthToken, Optional[gr.OAuthToken])  # a signed-in visitor's Hub token (None: signed out)


def _filled(fn: Callable) -> dict:
    """The handler's parameters that gradio fills by type hint (beyond the request ``_signature`` adds)."""
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # a hint that only names a type under TYPE_CHECKING: nothing gradio fills
        return {}
    return {name: hint for name, hint in hints.items() if name != "return" and hint in GRADIO_FILLED}


def _signed(call: Callable, fn: Callable, sig: inspect.Signature) -> Callable:
    call.__signature__ = sig
    call.__annotations__ = _filled(fn) | {"request": gr.Request}  # gradio finds what it fills by type hint
    call.__name__ = fn.__name__
    return call


def guarded(fn: Callable, adapt: Callable = lambda out: out) -> Callable:
    """Wrap a handler for gradio: progress bar in, friendly errors out, ``adapt`` maps its view to outputs."""
    sig, has_progress, own = _signature(fn)

    def call(*args):
        args = _handler_args(args, own, has_progress)
        try:
            return adapt(fn(*args))
        except Cancelled as exc:
            return stopped(exc)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message, not a dead session
            raise _friendly(exc) from exc

    return _signed(call, fn, sig)


def guarded_stream(fn: Callable, adapt: Callable = lambda out: out) -> Callable:
    """Like ``guarded`` for generator handlers (streaming chat, a run that draws a live chart)."""
    sig, has_progress, own = _signature(fn)

    def call(*args):
        args = _handler_args(args, own, has_progress)
        try:
            for out in fn(*args):
                yield adapt(out)
        except Cancelled as exc:
            yield stopped(exc)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _friendly(exc) from exc

    return _signed(call, fn, sig)


def stopped(exc: Cancelled):
    """A job the user stopped: a warning toast (not an error), and every output keeps what it showed."""
    gr.Warning(str(exc) or "Stopped.")
    return gr.skip()


def stop(session) -> None:
    """The Stop buttons: cancel this session's running job between two engine steps."""
    if session.stop():
        gr.Info("Stopping after the current step …")
