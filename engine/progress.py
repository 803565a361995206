"""Progress reporting and cancellation shared by every long-running engine call.

The engine never knows who is listening: the CLI maps reports onto tqdm bars, the UI onto
``gr.Progress``. Cancellation is cooperative: long loops call ``check()`` between layers.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import Cancelled


@dataclass(frozen=True)
class CurvePoint:
    """One point of a named curve a job draws as it goes (a search's best fitness by generation), so a
    listener can chart it live without knowing the job: points of one ``curve`` share their axes."""

    curve: str  # the y axis, e.g. "best KL to the original"
    x: float
    y: float
    x_label: str = "step"


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    step: int
    total: int
    message: str = ""
    point: Optional[CurvePoint] = None


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class CancelToken:
    """Set from another thread (the Stop button); checked by the engine between steps."""

    _event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("Cancelled by the user; the original model is unchanged.")


@dataclass
class Reporter:
    """Bundles a callback and a cancel token so engine functions take one argument."""

    callback: Optional[ProgressCallback] = None
    cancel: Optional[CancelToken] = None

    def __call__(self, stage: str, step: int, total: int, message: str = "",
                 point: Optional[CurvePoint] = None) -> None:
        if self.cancel is not None:
            self.cancel.check()
        if self.callback is not None:
            self.callback(ProgressEvent(stage, step, total, message, point))

    def check(self) -> None:
        if self.cancel is not None:
            self.cancel.check()

    def finished(self, stage: str, total: int, message: str = "") -> None:
        """The last report of a job that is done: a Stop now has nothing left to stop, so it is not
        checked (it would call a finished job, a save already in place, "cancelled")."""
        if self.callback is not None:
            self.callback(ProgressEvent(stage, total, total, message))


def as_reporter(progress: "Reporter | ProgressCallback | None") -> Reporter:
    if isinstance(progress, Reporter):
        return progress
    return Reporter(callback=progress)


class TqdmProgress:
    """A progress callback that draws one tqdm bar per stage (stderr, so --json stays clean)."""

    def __init__(self, disable: bool = False):
        self.disable = disable
        self._bar = None
        self._stage: Optional[str] = None

    def __call__(self, event: ProgressEvent) -> None:
        from tqdm.auto import tqdm

        if self._stage != event.stage or self._bar is None:
            self.close()
            self._stage = event.stage
            self._bar = tqdm(total=event.total, desc=event.stage, disable=self.disable, leave=False)
        self._bar.n = event.step
        if event.message:
            self._bar.set_postfix_str(event.message, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
