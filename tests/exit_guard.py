"""End the test process right after pytest has reported, skipping the interpreter's teardown.

Native thread pools of third-party libraries the suite loads in one process (Arrow's, behind pandas,
datasets and gradio; llama.cpp's; torch's) can abort the process while Python finalizes: CI once
saw all tests pass and then ``terminate called without an active exception`` (SIGABRT, exit 134)
during the final garbage collection. Nothing of ours runs then, so the exit status pytest computed
is the suite's verdict: flush, run the ``atexit`` handlers, and leave with that status."""
from __future__ import annotations

import atexit
import os
import sys

import pytest

_status: list[int] = []


def pytest_sessionfinish(session, exitstatus) -> None:
    _status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    if not _status:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    atexit._run_exitfuncs()
    os._exit(_status[-1])
