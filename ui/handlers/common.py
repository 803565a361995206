"""What every handler shares: requirements on the session, progress plumbing, the data dir."""
from __future__ import annotations

import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, TypeVar, Union

from engine import CompressionResult, ConfigError, CurvePoint, LoadedModel, ProgressEvent, Reporter, SlimLabError

from ..state import Session

Progress = Optional[Callable[[ProgressEvent], None]]
T = TypeVar("T")


class NotReady(SlimLabError):
    """A step was asked for before the step it depends on (e.g. Compress before Load)."""


def need_model(session: Session) -> LoadedModel:
    if session.lm is None:
        raise NotReady("No model is loaded yet. Open the Model tab and press Load (the demo model loads by itself).")
    return session.lm


def need_result(session: Session) -> CompressionResult:
    if session.result is None:
        raise NotReady("There is no compressed model in this session yet. Run a compression in the Compress tab.")
    return session.result


def _shown(value: Any) -> str:
    return "a blank field" if value is None or str(value).strip() == "" else repr(value)[:40]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def whole(value: Any, field: str, minimum: int, maximum: Optional[int] = None, why: str = "") -> int:
    """A whole-number control's value. A blank, a non-number, a fraction or a value outside
    [minimum, maximum] is refused with one line naming the field and its range (``why`` says where
    the maximum comes from): a blank or a huge size never quietly means "all of it"."""
    number = _number(value)
    if not number.is_integer() or number < minimum or (maximum is not None and number > maximum):
        span = f"from {minimum:,} to {maximum:,}" if maximum is not None else f"of at least {minimum:,}"
        raise ConfigError(f"{field} must be a whole number {span} (got {_shown(value)}){f'; {why}' if why else ''}.")
    return int(number)


def within(value: Any, field: str, minimum: float, maximum: float) -> float:
    """A number control's value, refused with one line naming the field and its range when blank, not a
    number (NaN included) or outside [minimum, maximum]."""
    number = _number(value)
    if not minimum <= number <= maximum:  # NaN fails both
        raise ConfigError(f"{field} must be a number from {minimum:g} to {maximum:g} (got {_shown(value)}).")
    return number


def job(session: Session, progress: Progress) -> Reporter:
    """A reporter for a new job: progress goes to the UI, the session's Stop button cancels it."""
    return Reporter(callback=progress, cancel=session.new_job())


def data_dir() -> Optional[str]:
    return os.environ.get("SLIMLAB_DATA_DIR") or None


def status_line(session: Session) -> str:
    """The one-line header: which model is loaded and which compressed model this session holds."""
    from ..text import m

    if session.lm is None:
        return "**Model:** loading the demo model …"
    base = f"**Model:** `{session.lm.spec}` on {session.lm.device.type}"
    if session.run is None:
        return f"{base} · **compressed:** none yet"
    s = session.run.summary
    grew = " (bigger than the original!)" if s["bigger_than_original"] else ""
    return f"{base} · **compressed:** run {session.run.run_id}, {session.run.label}, {m(s['params_total'])}{grew}"


@dataclass
class RunChoices:
    """A run picker (Chat, Evaluate): (title, run id) newest first, and the one selected."""

    choices: list[tuple[str, int]]
    value: Optional[int]


def run_choices(session: Session, selected: Optional[int] = None) -> RunChoices:
    """The session's runs that still have their model, newest first; ``selected`` if it is one, else the newest."""
    runs = session.runs_with_models()
    ids = [r.run_id for r in runs]
    value = selected if selected in ids else (ids[0] if ids else None)
    return RunChoices([(r.title(), r.run_id) for r in runs], value)


@dataclass
class Curves:
    """The named curves a running job has drawn so far: the points its progress events carry."""

    points: dict[str, tuple[str, list[float], list[float]]] = field(default_factory=dict)  # name -> (x label, xs, ys)

    def add(self, point: CurvePoint) -> None:
        _, xs, ys = self.points.setdefault(point.curve, (point.x_label, [], []))
        xs.append(point.x)
        ys.append(point.y)


_DONE = object()  # the worker's last word on the queue


def live(work: Callable[[Progress], T], progress: Progress, stop: Callable[[], Any],
         every: float = 1.0) -> Iterator[Union[Curves, T]]:
    """Run ``work(callback)`` on a worker thread; yield the ``Curves`` its progress events draw, at most once
    every ``every`` seconds (a fast search would otherwise redraw the page's chart faster than a browser
    draws it), then its result. Its progress reaches ``progress`` on this thread (gradio's bar belongs to the
    event's thread); its error (a Stop's ``Cancelled`` too) is raised here. Closing the generator early (the
    client left) calls ``stop``, so the job is cancelled at its next step."""
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = work(events.put)
        except BaseException as exc:  # noqa: BLE001 - handed to the generator, which raises it
            outcome["error"] = exc
        finally:
            events.put(_DONE)

    worker = threading.Thread(target=target, name="slimlab-job", daemon=True)
    worker.start()
    curves, done, pending, shown = Curves(), False, False, -math.inf
    try:
        while not done:
            try:  # wait for the next event, or until a pending redraw is due
                event = events.get(timeout=max(0.0, shown + every - time.monotonic()) if pending else None)
            except queue.Empty:
                event = None
            if event is _DONE:
                done = True
            elif event is not None:
                if progress is not None:
                    progress(event)
                if event.point is not None:
                    curves.add(event.point)
                    pending = True
            if pending and not done and time.monotonic() >= shown + every:
                pending, shown = False, time.monotonic()
                yield curves
    finally:
        if not done:  # closed before the job ended
            stop()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    yield outcome["result"]
