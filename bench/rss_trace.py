"""Which stage of a `slimlab` command holds its peak memory: the CLI run in this process with a
sampling thread beside it.

A thread reads ``/proc/self/status`` (VmRSS, RssAnon, VmHWM) every ``--interval`` seconds and
charges each reading to the stage running at that moment. A stage is named by the engine itself:
the functions listed in ``MARKS`` (load, compress, the recovery's teacher pass, training and
merge, the spool read back, save) are wrapped to open a stage while they run, and every progress
report (``engine.progress.Reporter``: calibration, each layer's pass, teacher outputs, training
steps) names the sub-stage within it. Nothing in the engine is changed. Because VmHWM is a
high-water mark, a spike shorter than the interval still shows: a rise of VmHWM between two
readings is charged to the stage of the second one (a stage change takes a reading first, so a
rise is never charged across a boundary). The CLI resets VmHWM before compressing
(``engine.memory.reset_peak``), so the process's overall peak is the largest stage peak here,
whatever ``/usr/bin/time`` says.

    python bench/rss_trace.py [--interval 0.01] [--log bench/results/rss_trace.log] -- \\
        compress demo --method fasp --ratio 0.2 --nsamples 16 --seqlen 256 --recovery lora --recovery-steps 6

prints one row per stage (in the order first seen): seconds, RSS when it began, its highest
reading, its peak (VmHWM) and anonymous memory at its highest reading, in MB; the stage that
holds the process's peak is starred. ``--log`` also gets each stage change as it happens.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO

MARKS = {  # "module:attribute" -> stage name; the functions the compress command runs, in order
    "engine.commands.compress:load": "load",
    "engine.commands.compress:compress": "compress",
    "engine.workspace:Workspace.load_spooled": "read spool back",
    "engine.recovery.heal:teacher_targets": "teacher pass",
    "engine.recovery.heal:distill": "training",
    "engine.recovery.lora:merge": "lora merge",
    "engine.commands.compress:save_compressed": "save",
}
STATUS_KEYS = ("VmRSS", "RssAnon", "VmHWM")


def read_status() -> dict[str, int]:
    """VmRSS, RssAnon and VmHWM of this process in KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in STATUS_KEYS:
            out[key] = int(rest.split()[0])
    return out


@dataclass
class StageRow:
    """What the readings charged to one stage show, in KiB."""

    name: str
    start_rss: int
    seconds: float = 0.0
    max_rss: int = 0
    anon_at_max: int = 0
    peak: int = 0  # the highest VmHWM reached while the stage ran (0: VmHWM did not rise in it)
    at: str = ""  # the progress message when the highest reading was taken


class RssTrace:
    """The sampling thread and the current stage (a stack of marks, plus the last progress report inside
    the innermost one)."""

    def __init__(self, interval: float, log: Optional[TextIO] = None):
        self.interval, self.log = interval, log
        self.rows: dict[str, StageRow] = {}
        self.marks: list[str] = ["imports"]
        self.progress: Optional[str] = None
        self.message = ""
        self.lock = threading.Lock()
        self.last_hwm = 0
        self.t_last = time.perf_counter()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def stage(self) -> str:
        return "/".join(self.marks + ([self.progress] if self.progress else []))

    def sample(self) -> None:
        with self.lock:
            now, status = time.perf_counter(), read_status()
            row = self.rows.get(self.stage)
            if row is None:
                row = self.rows[self.stage] = StageRow(self.stage, status["VmRSS"])
            row.seconds += now - self.t_last
            self.t_last = now
            if status["VmRSS"] > row.max_rss:
                row.max_rss, row.anon_at_max, row.at = status["VmRSS"], status["RssAnon"], self.message
            if status["VmHWM"] > self.last_hwm:  # the high-water mark rose since the last reading: in this stage
                row.peak = max(row.peak, status["VmHWM"])
            self.last_hwm = status["VmHWM"]  # also after a reset (clear_refs), which lowers it

    def switch(self, change: Callable[[], None]) -> None:
        """Read once for the stage that ends, then apply ``change`` to the stage name."""
        self.sample()
        with self.lock:
            change()
            stage = self.stage
        if self.log is not None:
            self.log.write(f"{time.strftime('%H:%M:%S')} {read_status()['VmRSS'] / 1024:8.0f} MB  {stage}\n")
            self.log.flush()

    def _set(self, marks: list[str], progress: Optional[str]) -> None:
        self.marks, self.progress, self.message = marks, progress, ""

    @contextlib.contextmanager
    def mark(self, name: str) -> Iterator[None]:
        """Stage ``name`` inside the current marks while the block runs (the outer stage again after it,
        without its last progress report)."""
        outer = list(self.marks)
        self.switch(lambda: self._set(outer + [name], None))
        try:
            yield
        finally:
            self.switch(lambda: self._set(outer, None))

    def rename(self, name: str) -> None:
        """Call the outermost stage ``name`` from now on."""
        self.switch(lambda: self._set([name], None))

    def report(self, stage: str, message: str) -> None:
        if stage != self.progress:
            self.switch(lambda: self._set(self.marks, stage))
        self.message = message

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def __enter__(self) -> "RssTrace":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.sample()


def wrap(trace: RssTrace, target: str, name: str) -> None:
    """Replace ``module:attr`` (or ``module:Class.attr``) by a wrapper that runs it as stage ``name``."""
    module_name, _, path = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, attr = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    inner = getattr(owner, attr)

    @functools.wraps(inner)
    def run(*args, **kwargs):
        with trace.mark(name):
            return inner(*args, **kwargs)

    setattr(owner, attr, run)


def instrument(trace: RssTrace) -> None:
    """Stages from the ``MARKS`` functions and from every progress report."""
    from engine.progress import Reporter

    for target, name in MARKS.items():
        wrap(trace, target, name)
    call = Reporter.__call__

    def reported(self, stage, step, total, message=""):
        trace.report(stage, message or f"{step}/{total}")
        return call(self, stage, step, total, message)

    Reporter.__call__ = reported


def table(rows: list[StageRow]) -> list[str]:
    top = max(rows, key=lambda r: max(r.peak, r.max_rss))
    mb = lambda kib: f"{kib / 1024:,.0f}"  # noqa: E731
    lines = [f"{'stage':<58} {'s':>6} {'start':>7} {'max':>7} {'peak':>7} {'anon':>7}  at"]
    for r in rows:
        star = "*" if r is top else " "
        lines.append(f"{star}{r.name[:57]:<57} {r.seconds:6.1f} {mb(r.start_rss):>7} {mb(r.max_rss):>7} "
                     f"{mb(r.peak) if r.peak else '-':>7} {mb(r.anon_at_max):>7}  {r.at[:40]}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--interval", type=float, default=0.01, help="seconds between readings")
    p.add_argument("--log", type=Path, default=None, help="append each stage change to this file as it happens")
    p.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the slimlab arguments")
    args = p.parse_args()
    argv = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    log = args.log.open("a") if args.log else None
    if log:
        log.write(f"# slimlab {' '.join(argv)}\n")
    with RssTrace(args.interval, log) as trace:
        from engine.cli import main as cli_main

        instrument(trace)
        trace.rename("cli")
        code = cli_main(argv)
    lines = table(list(trace.rows.values()))
    print("\n".join(["memory by stage (MB; start/max: VmRSS readings, peak: VmHWM, anon: RssAnon at max)"] + lines),
          file=sys.stderr)
    if log:
        log.write("\n".join(lines) + "\n")
        log.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
